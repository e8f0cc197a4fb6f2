"""Warm, jitted timings of the detection ops at the paper's 512x1024 input.

  python scripts/bench_ops.py [--repeats 10] [--seed 0]

Each op is jitted, called once to compile (the compile time is printed too), then timed
over --repeats calls; the median wall time is reported with block_until_ready. Inputs
are random but shaped like the real thing:

- nms: N clustered boxes (objects with jittered duplicates, as an RPN emits), IoU 0.7,
  max_output min(N, 2000).
- generate_proposals: one 512x1024 image, P2..P6 anchors from generate_anchors (sizes
  32..512, ratios 0.5/1/2), random logits and deltas; the test setting (pre 1000 / post
  1000 per image) and the train setting (2000 / 2000), NMS 0.7.
- multilevel_roi_align: 512 boxes from fpn_level over P2..P5 with 256 channels, 7x7,
  sampling ratio 2.
"""

import argparse
import functools
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

from segrpn_jax import benchmark
from segrpn_jax.ops import anchors as anchor_ops
from segrpn_jax.ops import boxes as box_ops
from segrpn_jax.ops.nms import nms
from segrpn_jax.ops.proposals import generate_proposals
from segrpn_jax.ops.roi_align import multilevel_roi_align

HEIGHT, WIDTH = 512, 1024


def _time(fn, args, repeats):
  """Returns (compile + first call seconds, median seconds of the warm calls)."""
  first, warm = benchmark.time_calls(functools.partial(fn, *args), repeats)
  return first, statistics.median(warm)


def _random_boxes(rng, n):
  """Boxes clustered around n/8 objects, like the candidates an RPN sends to NMS."""
  num_objects = max(1, n // 8)
  centres = rng.uniform([0, 0], [WIDTH, HEIGHT], (num_objects, 2))
  sides = np.exp(rng.uniform(np.log(16), np.log(400), (num_objects, 2)))
  pick = rng.integers(0, num_objects, n)
  c = centres[pick] + rng.normal(0, 0.1, (n, 2)) * sides[pick]
  s = sides[pick] * np.exp(rng.normal(0, 0.15, (n, 2)))
  boxes = np.concatenate([c - s / 2, c + s / 2], axis=1)
  return boxes.astype(np.float32), rng.random(n).astype(np.float32)


def _report(name, first, median):
  print(f"{name:<48s} {median * 1e3:9.2f} ms   (first call {first:6.2f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
  """Runs the benchmarks and prints one line per op.

  Args:
    argv: command-line arguments without the program name (None: sys.argv[1:]).

  Returns:
    The process exit status.
  """
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=10, help="timed calls after the warm-up")
  parser.add_argument("--seed", type=int, default=0, help="NumPy seed of the random inputs")
  args = parser.parse_args(argv)
  if args.repeats < 1:
    parser.error(f"--repeats must be >= 1, got {args.repeats}")
  rng = np.random.default_rng(args.seed)
  print(f"devices: {jax.devices()}  (median of {args.repeats} warm calls)", flush=True)

  for n in (1000, 2000, 10000):
    boxes, scores = _random_boxes(rng, n)
    max_output = min(n, 2000)
    fn = jax.jit(lambda b, s, m=max_output: nms(b, s, 0.7, m))
    first, median = _time(fn, (boxes, scores), args.repeats)
    _report(f"nms N={n} max_output={max_output}", first, median)

  anchors = anchor_ops.generate_anchors(HEIGHT, WIDTH)
  logits = [rng.normal(0, 2, a.shape[0]).astype(np.float32) for a in anchors]
  deltas = [rng.normal(0, 0.2, a.shape).astype(np.float32) for a in anchors]
  counts = "+".join(str(a.shape[0]) for a in anchors)
  for setting, pre, post in (("test", 1000, 1000), ("train", 2000, 2000)):
    fn = jax.jit(
      lambda lg, dl, pre=pre, post=post: generate_proposals(
        lg, dl, anchors, (HEIGHT, WIDTH), pre, post, 0.7
      )
    )
    first, median = _time(fn, (logits, deltas), args.repeats)
    _report(f"generate_proposals {setting} pre={pre} post={post}", first, median)
  print(f"  (anchors per level P2..P6: {counts})", flush=True)

  channels, num_boxes = 256, 512
  features = [
    jnp.asarray(rng.normal(size=(HEIGHT >> level, WIDTH >> level, channels)), jnp.float32)
    for level in range(2, 6)
  ]
  boxes, _ = _random_boxes(rng, num_boxes)
  boxes = np.asarray(box_ops.clip(boxes, HEIGHT, WIDTH))
  levels = box_ops.fpn_level(boxes)
  fn = jax.jit(lambda f, b, lv: multilevel_roi_align(f, b, lv, 7))
  first, median = _time(fn, (features, boxes, levels), args.repeats)
  per_level = np.bincount(np.asarray(levels), minlength=6)[2:6].tolist()
  _report(f"multilevel_roi_align R={num_boxes} C={channels} 7x7", first, median)
  print(f"  (boxes per level P2..P5: {per_level})", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
