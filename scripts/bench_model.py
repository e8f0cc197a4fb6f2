"""Parameter counts of SegRPN and its baseline, and the warm jitted inference time of one model.

  python scripts/bench_model.py                      # ResNet-50, 512x1024, batch 1, roi+rpn
  python scripts/bench_model.py --fusion none --repeats 10

Counts use jax.eval_shape (no compilation). The timing compiles `api.predict` once, runs it once
to warm up, then reports the median wall time of `--repeats` calls on random-initialised
weights. Untrained weights make every class score about 1/9 > 0.05, so the detection NMS sees
all 1000 x 8 candidates: an upper bound for that step. The host load average is printed with
the timings, since other processes on the machine slow them down.
"""

import argparse
import os
import time

import jax
import numpy as np

from configs import baseline, case1
from segrpn_jax import api


def parameter_count(config) -> tuple[int, int]:
  """(trainable params, non-trainable variables such as frozen BN statistics)."""
  shapes = jax.eval_shape(lambda k: api.init_variables(config, k), jax.random.key(0))
  sizes = {c: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for c, v in shapes.items()}
  return sizes.pop("params"), sum(sizes.values())


def paper_config(name: str, backbone: str):
  """configs/<name>.py with random weights (the timing does not depend on their values)."""
  config = {"case1": case1, "baseline": baseline}[name].get_config()
  config.model.backbone = backbone
  config.model.pretrained = ""
  return config


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--backbone", default="resnet50")
  parser.add_argument("--fusion", default=None, help="inference fusion (default: the config's)")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  args = parser.parse_args()

  for name in ("case1", "baseline"):
    params, other = parameter_count(paper_config(name, args.backbone))
    print(f"{name:9s} {args.backbone}: {params:,} parameters (+{other:,} non-trainable)")

  config = paper_config("case1", args.backbone)
  config.model.dtype = args.dtype
  model = api.create_model(config)
  variables = api.init_variables(config, jax.random.key(0))
  height, width = config.data.image_size
  images = np.random.RandomState(0).randn(args.batch, height, width, 3).astype(np.float32)
  fusion = args.fusion or config.model.fusion.inference

  predict = lambda: api.predict(model, variables, images, fusion=fusion)
  first, warm = time_calls(predict, args.repeats)
  print(
    f"predict {args.backbone} {height}x{width} batch {args.batch} fusion {fusion} "
    f"{args.dtype} on {jax.devices()[0].device_kind} ({os.cpu_count()} cores): "
    f"compile + first run {first:.1f} s, warm median {np.median(warm):.3f} s "
    f"(min {np.min(warm):.3f}, max {np.max(warm):.3f}, {args.repeats} runs); "
    f"load average {os.getloadavg()[0]:.2f}"
  )
  # The dense part alone: backbone, FPN, both RPN heads and the class-agnostic convs (the
  # semantic head is not among the outputs of rpn_maps, so XLA drops it).
  _, warm = time_calls(lambda: api.rpn_maps(model, variables, images), args.repeats)
  print(
    f"  of which dense maps (api.rpn_maps): warm median {np.median(warm):.3f} s; "
    f"load average {os.getloadavg()[0]:.2f}"
  )


def time_calls(fn, repeats: int) -> tuple[float, list[float]]:
  """(compile + first call seconds, warm call seconds) of a jitted function."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  warm = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    warm.append(time.perf_counter() - start)
  return first, warm


if __name__ == "__main__":
  main()
