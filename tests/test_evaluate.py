"""Evaluation's COCO exports re-scored by a fresh pycocotools run, and its fusion list."""

import contextlib
import io
import json

import jax.numpy as jnp
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segrpn_jax import evaluate, metrics
from segrpn_jax.configs import default

H, W, B, P = 32, 64, 3, 40


def _batch_and_outputs(rng, fusions):
  """A gathered host batch (last example padding) and api.predict_fusions-like outputs."""
  xy = rng.uniform(0, [W - 20, H - 12], (B, 4, 2))
  boxes = np.concatenate([xy, xy + rng.uniform(3, [20, 12], (B, 4, 2))], -1).astype(np.float32)
  valid = np.array([[True, True, True, False]] * B)
  semantic = np.zeros((B, H, W), np.int32)
  crowd = np.zeros((B, H, W), bool)
  crowd[0, 2:6, 50:60], semantic[0, 2:6, 50:60] = True, 13  # a car group in the first image
  batch = {
    "boxes": np.where(valid[..., None], boxes, 0), "classes": np.where(valid, 3, 0),
    "valid": valid, "semantic": semantic, "crowd": crowd,
    "example_mask": np.array([True, True, False]),
    "image_id": evaluate._encode_ids([b"city_000001", b"city_000002", b""]),
  }  # fmt: skip
  out = {"fusions": {}}
  for f in fusions:
    jitter = rng.normal(0, 1.5, (B, 4, 4)).astype(np.float32)
    det = np.concatenate([boxes + jitter, rng.uniform(0, 30, (B, 2, 4))], 1)
    det = np.concatenate([det[..., :2], det[..., :2] + np.abs(det[..., 2:] - det[..., :2])], -1)
    props = np.concatenate([det, np.tile(det[:, :1], (1, P - 6, 1)) + 5], 1)
    out["fusions"][f] = {
      "detections": {"boxes": det, "scores": rng.random((B, 6)),
                     "classes": rng.integers(1, 4, (B, 6)), "valid": np.ones((B, 6), bool)},
      "proposals": {"boxes": props, "scores": rng.random((B, P)), "logits": np.zeros((B, P)),
                    "valid": np.ones((B, P), bool)},
    }  # fmt: skip
  return batch, out


def _pycocotools(gt_path, dt_path, **params):
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(str(gt_path))
    ev = COCOeval(gt, gt.loadRes(str(dt_path)), "bbox")
    for key, value in params.items():
      setattr(ev.params, key, value)
    ev.evaluate()
    ev.accumulate()
  return ev.eval


def test_written_exports_rescore_to_the_reported_metrics(tmp_path):
  config = default.get_config()
  config.data.image_size = (H, W)
  config.model.size_scale = H / 512
  config.eval.max_proposals = 20  # of P = 40: the export keeps the top 20 per image
  fusions = evaluate.evaluated_fusions(config)
  collector = evaluate._CocoCollector(fusions)
  rng = np.random.default_rng(0)
  for _ in range(2):
    collector.add(*reversed(_batch_and_outputs(rng, fusions)))
  results = evaluate._detection_metrics(config, collector, fusions, 7, str(tmp_path))
  folder = tmp_path / "eval_7"
  ground_truth = json.loads((folder / "ground_truth.json").read_text())
  assert [i["file_name"] for i in ground_truth["images"]] == ["city_000001", "city_000002"] * 2
  assert [i["id"] for i in ground_truth["images"]] == [1, 2, 3, 4]
  assert {(i["height"], i["width"]) for i in ground_truth["images"]} == {(H, W)}
  crowd = [a for a in ground_truth["annotations"] if a["iscrowd"]]
  assert [(a["image_id"], a["bbox"], a["category_id"]) for a in crowd] == [
    (1, [50.0, 2.0, 10.0, 4.0], 3), (3, [50.0, 2.0, 10.0, 4.0], 3)
  ]  # fmt: skip
  proposals = json.loads((folder / "proposals.json").read_text())
  assert len(proposals) == 4 * 20 and {p["category_id"] for p in proposals} == {1}
  # A fresh pycocotools run on the files gives the reported numbers.
  ap = _pycocotools(folder / "ground_truth.json", folder / "detections.json",
                    iouThrs=np.array([0.5]), maxDets=[100])  # fmt: skip
  precision = ap["precision"][0, :, :, 0, 0]
  assert results["mAP50"] == pytest.approx(precision[precision > -1].mean(), abs=1e-12)
  assert results["AP50/car"] == pytest.approx(precision[:, 2].mean(), abs=1e-12)
  ar = _pycocotools(folder / "ground_truth.json", folder / "proposals.json", useCats=0,
                    maxDets=[20])  # fmt: skip
  assert results["AR@20"] == pytest.approx(ar["recall"][:, 0, 0, 0].mean(), abs=1e-12)
  # Every fusion of roi+rpn training is scored; the unprefixed keys are roi+rpn's.
  assert fusions == ("roi+rpn", "roi", "rpn", "none")
  for f in fusions:
    assert {f"inference/{f}/mAP50", f"inference/{f}/AR@20"} <= set(results)
  assert results["mAP50"] == results["inference/roi+rpn/mAP50"]
  assert results["inference/none/mAP50"] != results["mAP50"]  # other detections, other AP
  # Level keys exactly for the levels (case1 at size_scale 1/16) holding non-crowd truth.
  areas = [a["area"] for a in ground_truth["annotations"] if not a["iscrowd"]]
  ranges = metrics.level_area_ranges("case1", H / 512)
  with_truth = {k for k, (low, high) in ranges.items() if any(low <= a <= high for a in areas)}
  assert {k.split("/")[-1] for k in results if k.startswith("AP50/L")} == with_truth
  assert {k.split("/")[-1] for k in results if k.startswith("AR@20/L")} == with_truth
  assert 0 < len(with_truth) < 5


def test_the_inference_fusion_is_evaluated_first():
  config = default.get_config()
  config.model.fusion.train, config.model.fusion.inference = "roi+rpn", "rpn"
  assert evaluate.evaluated_fusions(config) == ("rpn", "roi+rpn", "roi", "none")


def test_foreground_labels():
  semantic = jnp.array([[0, 11, 18, 255, 13]])
  crowd = jnp.array([[False, False, False, False, True]])
  np.testing.assert_array_equal(evaluate.foreground_labels(semantic, crowd), [[0, 1, 1, 255, 255]])
  assert set(evaluate.BINARY_MAPS) == {"mIoU*", "mIoU*/semantic"}
  assert metrics.BINARY_CLASSES == ("background", "foreground")
