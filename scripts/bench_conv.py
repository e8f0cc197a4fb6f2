"""GFLOP/s of the model's convolutions: forward, input gradient and weight gradient, ours and XLA's.

  python scripts/bench_conv.py                 # the shapes of ResNet-50-FPN SegRPN at 512x1024
  python scripts/bench_conv.py --batch 2 --repeats 10

Each row is one convolution shape of the model at 512x1024 input, batch `--batch`, float32.
"xla" is `lax.conv_general_dilated` and `jax.vjp` of it; "ours" is what the model runs,
`segrpn_jax.ops.conv.conv_general_dilated` and `jax.vjp` of it (on CPU: 1x1 convolutions as
matrix products; other weight gradients as matrix products per kernel column or tap; forward
and input gradient of the others XLA's own). Warm medians of `--repeats` jitted calls; FLOPs
are 2 * H_out * W_out * k^2 * C_in * C_out * batch for each of the three.
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
  ("res2 conv1 1x1 (128x256)", 128, 256, 256, 64, 1, 1),
  ("res3 conv2 3x3 (64x128)", 64, 128, 128, 128, 3, 1),
  ("res3 downsample 1x1/2", 128, 256, 256, 512, 1, 2),
  ("res4 conv2 3x3 (32x64)", 32, 64, 256, 256, 3, 1),
  ("res5 conv2 3x3 (16x32)", 16, 32, 512, 512, 3, 1),
  ("FPN lateral2 1x1 (128x256)", 128, 256, 256, 256, 1, 1),
  ("FPN/RPN/class-agnostic P2 3x3", 128, 256, 256, 256, 3, 1),
  ("FPN/RPN/class-agnostic P3 3x3", 64, 128, 256, 256, 3, 1),
  ("semantic head P2 3x3", 128, 256, 256, 128, 3, 1),
  ("class-agnostic map_conv 3x3", 128, 256, 128, 128, 3, 1),
  ("class-agnostic P2 logit 1x1", 128, 256, 256, 1, 1, 1),
]
PASSES = ("fwd", "dx", "dw")
NAMES = [f"{p} {owner}" for p in PASSES for owner in ("xla", "ours")]


def conv_fns(kernel: int, stride: int) -> dict:
  """{name in NAMES: jitted (x, w, dy) -> array}."""
  pad = kernel // 2
  kwargs = {"window_strides": (stride, stride), "padding": ((pad, pad), (pad, pad))}
  fns = {}
  for owner, conv_fn in (("xla", lax.conv_general_dilated), ("ours", conv.conv_general_dilated)):
    forward = functools.partial(conv_fn, dimension_numbers=NHWC, **kwargs)
    fns[f"fwd {owner}"] = jax.jit(lambda x, w, dy, f=forward: f(x, w))
    fns[f"dx {owner}"] = jax.jit(
      lambda x, w, dy, f=forward: jax.vjp(lambda x_: f(x_, w), x)[1](dy)[0]
    )
    fns[f"dw {owner}"] = jax.jit(
      lambda x, w, dy, f=forward: jax.vjp(lambda w_: f(x, w_), w)[1](dy)[0]
    )
  return fns


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  print(f"GFLOP/s on {jax.devices()[0].device_kind}, batch {args.batch}, float32, warm medians")
  print("| convolution | " + " | ".join(NAMES) + " | ours / xla (fwd, dx, dw) |")
  print("|---|" + "---|" * (len(NAMES) + 1))
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
    cells = " | ".join(f"{rates[n]:.1f}" for n in NAMES)
    ratios = ", ".join(f"{rates[f'{k} ours'] / rates[f'{k} xla']:.2f}x" for k in PASSES)
    print(f"| {label} | {cells} | {ratios} |", flush=True)


if __name__ == "__main__":
  main()
