"""GFLOP/s of the model's convolutions: forward, input gradient and weight gradient, ours and XLA's.

  python scripts/bench_conv.py                 # the shapes of ResNet-50-FPN SegRPN at 512x1024
  python scripts/bench_conv.py --batch 2 --repeats 10

Each row is one convolution shape of the model at 512x1024 input, batch `--batch`, float32.
`fwd` and `dx` are XLA's convolution and its input gradient (ours uses both unchanged);
`dw xla` is XLA's weight gradient (`jax.vjp` of `lax.conv_general_dilated`), `dw ours` the one
GEMM per kernel tap of `segrpn_jax.ops.conv` that the model uses on CPU. Warm medians of
`--repeats` jitted calls; FLOPs are 2 * H_out * W_out * k^2 * C_in * C_out * batch for each.
"""

import argparse
import functools

import jax
import numpy as np
from jax import lax

from segrpn_jax import benchmark
from segrpn_jax.ops import conv

NHWC = ("NHWC", "HWIO", "NHWC")

# (where in the model, input height, input width, C_in, C_out, kernel, stride) at 512x1024.
SHAPES = [
  ("res3 conv2 3x3 (64x128)", 64, 128, 128, 128, 3, 1),
  ("res3 downsample 1x1/2", 128, 256, 256, 512, 1, 2),
  ("res4 conv2 3x3 (32x64)", 32, 64, 256, 256, 3, 1),
  ("res5 conv2 3x3 (16x32)", 16, 32, 512, 512, 3, 1),
  ("FPN lateral2 1x1 (128x256)", 128, 256, 256, 256, 1, 1),
  ("FPN/RPN/class-agnostic P2 3x3", 128, 256, 256, 256, 3, 1),
  ("FPN/RPN/class-agnostic P3 3x3", 64, 128, 256, 256, 3, 1),
  ("semantic head P2 3x3", 128, 256, 256, 128, 3, 1),
  ("class-agnostic map_conv 3x3", 128, 256, 128, 128, 3, 1),
]


def conv_fns(kernel: int, stride: int) -> dict:
  """{'fwd', 'dx', 'dw xla', 'dw ours'}: jitted (x, w, dy) -> array."""
  pad = kernel // 2
  strides, pads = (stride, stride), ((pad, pad), (pad, pad))
  forward = functools.partial(
    lax.conv_general_dilated, window_strides=strides, padding=pads, dimension_numbers=NHWC
  )
  args = {"strides": strides, "pads": pads}
  return {
    "fwd": jax.jit(lambda x, w, dy: forward(x, w)),
    "dx": jax.jit(lambda x, w, dy: jax.vjp(lambda x_: forward(x_, w), x)[1](dy)[0]),
    "dw xla": jax.jit(lambda x, w, dy: conv.weight_grad_xla(x, dy, kernel_shape=w.shape, **args)),
    "dw ours": jax.jit(lambda x, w, dy: conv.weight_grad_gemm(x, dy, kernel_shape=w.shape, **args)),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  names = ["fwd", "dx", "dw xla", "dw ours"]
  print(f"GFLOP/s on {jax.devices()[0].device_kind}, batch {args.batch}, float32, warm medians")
  print("| convolution | " + " | ".join(names) + " | dw ours / dw xla |")
  print("|---|" + "---|" * (len(names) + 1))
  for label, height, width, c_in, c_out, kernel, stride in SHAPES:
    key_x, key_w, key_dy = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(key_x, (args.batch, height, width, c_in))
    w = jax.random.normal(key_w, (kernel, kernel, c_in, c_out))
    dy = jax.random.normal(key_dy, (args.batch, -(-height // stride), -(-width // stride), c_out))
    flops = 2 * dy.shape[0] * dy.shape[1] * dy.shape[2] * kernel * kernel * c_in * c_out
    rates = {}
    for name, fn in conv_fns(kernel, stride).items():
      _, warm = benchmark.time_calls(functools.partial(fn, x, w, dy), args.repeats)
      rates[name] = flops / np.median(warm) / 1e9
    cells = " | ".join(f"{rates[n]:.1f}" for n in names)
    print(f"| {label} | {cells} | {rates['dw ours'] / rates['dw xla']:.2f}x |", flush=True)


if __name__ == "__main__":
  main()
