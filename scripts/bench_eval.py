"""Evaluation cost: COCOeval on synthetic boxes, and all inference fusions vs one on a tiny model.

  python scripts/bench_eval.py                    # both parts
  python scripts/bench_eval.py --skip_model       # only the COCOeval timings
  python scripts/bench_eval.py --skip_cocoeval --repeats 20  # only the fusion timings
  python scripts/bench_eval.py --pycocotools 50   # also pycocotools on 50 images, for reference

COCOeval: 500 images (Cityscapes val) x 100 detections of 8 classes x 20 ground-truth boxes
(10% crowd) scored by metrics.detection_ap with the five level ranges, and 500 x 1000
proposals by metrics.proposal_recall (class-agnostic, ten IoU thresholds). The model part
times evaluate.eval_step (api.predict_fusions plus the confusion matrices) warm, under the
config's inference fusion alone and under every fusion of evaluate.evaluated_fusions, on the
configs' `tiny` setting (the tests' model: 64x128, quarter-width ResNet-18, roi+rpn fusion).
"""

import argparse
import contextlib
import io
import os
import time

import jax
import numpy as np

from segrpn_jax import api, evaluate, metrics
from segrpn_jax.configs import case1


def synthetic_exports(rng, num_images, num_dets, num_gt=20, classes=8):
  """COCO ground truth and results of random boxes in a 1024x2048 image."""
  ids = range(1, num_images + 1)

  def random_boxes(n):
    xy = rng.uniform(0, [1800, 900], (n, 2))
    return np.concatenate([xy, xy + rng.uniform(4, 240, (n, 2))], 1)

  ground_truth = metrics.to_coco_ground_truth(
    ids, [random_boxes(num_gt) for _ in ids], [rng.integers(1, classes + 1, num_gt) for _ in ids],
    [rng.random(num_gt) < 0.1 for _ in ids],
  )  # fmt: skip
  results = metrics.to_coco_json(
    ids, [random_boxes(num_dets) for _ in ids], [rng.random(num_dets) for _ in ids],
    [rng.integers(1, classes + 1, num_dets) for _ in ids],
  )  # fmt: skip
  return ground_truth, results


def bench_cocoeval(pycocotools_images: int) -> None:
  rng = np.random.default_rng(0)
  ranges = metrics.level_area_ranges("case1")
  ground_truth, detections = synthetic_exports(rng, 500, 100)
  start = time.perf_counter()
  ap = metrics.detection_ap(ground_truth, detections, ranges)
  print(f"detection_ap  500 images x 100 dets x 20 gt, 6 area ranges: "
        f"{time.perf_counter() - start:.2f} s (mAP50 {ap['mAP50']:.4f})")  # fmt: skip
  ground_truth, proposals = synthetic_exports(rng, 500, 1000)
  start = time.perf_counter()
  ar = metrics.proposal_recall(ground_truth, proposals, 1000, ranges)
  print(f"proposal_recall 500 images x 1000 proposals x 20 gt, 6 area ranges: "
        f"{time.perf_counter() - start:.2f} s (AR@1000 {ar['AR@1000']:.4f})")  # fmt: skip
  if pycocotools_images:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    n = pycocotools_images
    ground_truth, proposals = synthetic_exports(rng, n, 1000)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
      gt = COCO()
      gt.dataset = ground_truth
      gt.createIndex()
      ev = COCOeval(gt, gt.loadRes(proposals), "bbox")
      ev.params.useCats, ev.params.maxDets = 0, [1000]
      ev.params.areaRng = [list(metrics.COCO_ALL_AREAS), *map(list, ranges.values())]
      ev.params.areaRngLbl = ["all", *ranges]
      ev.evaluate()
      ev.accumulate()
    seconds = time.perf_counter() - start
    print(f"pycocotools AR {n} images x 1000 proposals: {seconds:.1f} s "
          f"(~{seconds * 500 / n:.0f} s for 500)")  # fmt: skip


def _eval_step(model, variables, batch, fusions, config):
  return jax.block_until_ready(
    evaluate.eval_step(model, variables, batch, fusions, config.model.num_semantic_classes)
  )


def bench_fusions(batch_size: int, repeats: int) -> None:
  config = case1.get_config("tiny")  # the tests' model, roi+rpn fusion
  model = api.create_model(config)
  variables = api.init_variables(config, jax.random.key(0))
  h, w = config.data.image_size
  rng = np.random.default_rng(0)
  batch = {
    "image": rng.normal(size=(batch_size, h, w, 3)).astype(np.float32),
    "semantic": rng.integers(0, 19, (batch_size, h, w)).astype(np.int32),
    "crowd": np.zeros((batch_size, h, w), bool),
    "example_mask": np.ones(batch_size, bool),
  }
  settings = ((config.model.fusion.inference,), evaluate.evaluated_fusions(config))
  runs = {}
  for fusions in settings:
    start = time.perf_counter()
    _eval_step(model, variables, batch, fusions, config)
    print(f"eval_step {fusions}: first call (compile) {time.perf_counter() - start:.1f} s")
    runs[fusions] = []
  for _ in range(repeats):  # alternated, so a change of machine load hits both alike
    for fusions in settings:
      start = time.perf_counter()
      _eval_step(model, variables, batch, fusions, config)
      runs[fusions].append(time.perf_counter() - start)
  times = {f: float(np.median(r)) for f, r in runs.items()}
  for fusions, seconds in times.items():
    print(f"eval_step {fusions}: warm median {seconds * 1e3:.1f} ms (batch {batch_size}, "
          f"load {os.getloadavg()[0]:.1f})")  # fmt: skip
  one, every = times.values()
  print(f"all fusions / one fusion: {every / one:.2f}x")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--skip_model", action="store_true")
  parser.add_argument("--skip_cocoeval", action="store_true")
  parser.add_argument("--pycocotools", type=int, default=0, metavar="N")
  parser.add_argument("--batch_size", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  if not args.skip_cocoeval:
    bench_cocoeval(args.pycocotools)
  if not args.skip_model:
    bench_fusions(args.batch_size, args.repeats)


if __name__ == "__main__":
  main()
