"""Evaluation's COCO exports re-scored by a fresh pycocotools run, and its fusion list."""

import contextlib
import io
import json

import jax.numpy as jnp
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segrpn_jax import evaluate, metrics, summaries
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
  assert results["AR50@20"] == pytest.approx(ar["recall"][0, 0, 0, 0], abs=1e-12)  # IoU 0.5
  # Every fusion of roi+rpn training is scored; the unprefixed keys are roi+rpn's.
  assert fusions == ("roi+rpn", "roi", "rpn", "none")
  for f in fusions:
    assert {f"inference/{f}/{k}" for k in ("mAP50", "AR@20", "AR50@20")} <= set(results)
  assert results["mAP50"] == results["inference/roi+rpn/mAP50"]
  assert results["inference/none/mAP50"] != results["mAP50"]  # other detections, other AP
  # Level keys exactly for the levels (case1 at size_scale 1/16) holding non-crowd truth.
  areas = [a["area"] for a in ground_truth["annotations"] if not a["iscrowd"]]
  ranges = metrics.level_area_ranges("case1", H / 512)
  with_truth = {k for k, (low, high) in ranges.items() if any(low <= a <= high for a in areas)}
  assert {k.split("/")[-1] for k in results if k.startswith("AP50/L")} == with_truth
  assert {k.split("/")[-1] for k in results if k.startswith("AR@20/L")} == with_truth
  assert {k.split("/")[-1] for k in results if k.startswith("AR50@20/L")} == with_truth
  assert 0 < len(with_truth) < 5


def test_results_print_as_tables():
  results = {
    "mAP50": 0.5, "AR50@20": 0.8, "AR@20": 0.4, "AP50/L3": 0.25, "AR50@20/L3": 0.75,
    "AR@20/L3": 0.375, "AP50/person": 0.5, "AP50/car": float("nan"), "mIoU": 0.6012,
    "inference/rpn/mAP50": 0.5, "inference/rpn/AR50@20": 0.8, "inference/rpn/AR@20": 0.4,
    "inference/rpn/AP50/person": 0.5, "inference/none/mAP50": 0.125,
    "inference/none/AR@20": 0.0625, "inference/none/AP50/person": 0.125,
  }  # fmt: skip
  lines = evaluate.format_results(results, ("rpn", "none"), max_proposals=20).splitlines()
  assert lines[:3] == [
    "fusion           mAP50  AR50@20  AR@20",
    "rpn (inference)  50.00    80.00  40.00",
    "none             12.50        -   6.25",  # this fusion has no AR50 key: not reported
  ]
  assert lines[4:6] == ["level (rpn)   AP50  AR50@20  AR@20", "L3           25.00    75.00  37.50"]
  # Segmentation: mIoU only (the model has neither mIoU* map).
  assert lines[7:9] == ["mIoU   mIoU*  mIoU*/semantic", "60.12      -               -"]
  per_class = dict(line.split(maxsplit=1) for line in lines[11:])
  assert lines[10].split() == ["AP50", "rpn", "none"]
  assert per_class["person"].split() == ["50.00", "12.50"]
  # The unprefixed keys are the inference fusion's (rpn), never another fusion's.
  assert per_class["car"].split() == ["nan", "-"]
  assert per_class["bus"].split() == ["-", "-"] and len(per_class) == len(metrics.THING_CLASSES)


def test_summary_picture_shows_ground_truth_beside_detections():
  rng = np.random.default_rng(1)
  batch, out = _batch_and_outputs(rng, ("roi",))
  batch["image"] = np.zeros((B, H, W, 3), np.float32)  # mean grey after denormalisation
  out["semantic_labels"] = np.full((B, H, W), 0, np.int32)  # all road
  out["fusions"]["roi"]["detections"]["valid"][:] = False  # no detections drawn
  pictures = evaluate._summary_images(out, batch, "roi")
  assert len(pictures) == 2  # the padding example is left out
  top = summaries.TITLE_HEIGHT
  picture = pictures[0]
  assert picture.shape == (2 * (top + H), 2 * W, 3)
  grey = summaries.denormalize(np.zeros((1, 1, 3)))[0, 0]
  truth, found = picture[top : top + H, :W], picture[top : top + H, W:]
  x1, y1 = np.round(batch["boxes"][0, 0, :2]).astype(int)
  np.testing.assert_array_equal(truth[y1 + 1, x1], summaries.TRAIN_ID_COLOURS[13])  # car outline
  assert (found == grey).all()  # nothing valid to draw
  semantic_truth = picture[2 * top + H :, :W]
  semantic_pred = picture[2 * top + H :, W:]
  road = summaries.semantic_overlay(np.full((1, 1, 3), grey, np.uint8), np.zeros((1, 1), int))
  np.testing.assert_array_equal(semantic_truth[0, 0], road[0, 0])  # ground truth 0 = road too
  np.testing.assert_array_equal(semantic_pred[H - 1, W - 1], road[0, 0])
  np.testing.assert_array_equal(
    semantic_truth[3, 55],
    summaries.semantic_overlay(np.full((1, 1, 3), grey, np.uint8), np.full((1, 1), 13))[0, 0],
  )  # fmt: skip  the car group


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
