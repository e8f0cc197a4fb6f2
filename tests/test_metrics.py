"""The COCOeval adapter against pycocotools and hand-computed cases; confusion matrices."""

import contextlib
import copy
import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segrpn_jax import metrics

_ALL_AREAS = {"areaRng": [[0, 1e5**2]], "areaRngLbl": ["all"]}
_AP_PARAMS = {"iouThrs": np.array([0.5]), "maxDets": [100], **_ALL_AREAS}
_AR_PARAMS = {"useCats": 0, "maxDets": [1000], **_ALL_AREAS}  # iouThrs: COCO's 0.5:0.05:0.95
_PAD = 4  # padding entries per image, with garbage boxes that must be skipped
_cm_jit = jax.jit(metrics.confusion_matrix_update, static_argnums=(2, 3))


def _cocoeval(gt_dataset, detections, **params):
  """Runs COCOeval (bbox) quietly on a dataset dict and a results list."""
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO()
    gt.dataset = copy.deepcopy(gt_dataset)
    gt.createIndex()
    if detections:
      dt = gt.loadRes(copy.deepcopy(detections))
    else:  # loadRes cannot read an empty list
      dt = COCO()
      dt.dataset = {**copy.deepcopy(gt_dataset), "annotations": []}
      dt.createIndex()
    ev = COCOeval(gt, dt, "bbox")
    for key, value in params.items():
      setattr(ev.params, key, value)
    ev.evaluate()
    ev.accumulate()
  return ev


def _coco_ap50(ev, num_classes=8, area=0):
  """Per-class AP50 (NaN for classes without ground truth) and their mean, from COCOeval."""
  precision = ev.eval["precision"][0, :, :, area, 0]  # [R, K]
  per_class = [p.mean() if (p > -1).all() else np.nan for p in precision.T]
  assert len(per_class) == num_classes
  valid = precision[precision > -1]
  return per_class, (valid.mean() if valid.size else np.nan)


def _coco_ar(ev, area=0):
  recall = ev.eval["recall"][:, 0, area, 0]
  return recall.mean() if (recall > -1).all() else np.nan


def _pad(array, fill):
  return np.concatenate([array, np.full((_PAD, *array.shape[1:]), fill, array.dtype)])


def _random_image(rng, num_gt, num_dt, crowd_fraction=0.3):
  """One image's padded ground truth (with crowd regions) and detections, float32 boxes."""
  xy = rng.uniform([0, 0], [460, 220], (num_gt, 2))
  gt = np.concatenate([xy, xy + rng.uniform(4, 120, (num_gt, 2))], 1).astype(np.float32)
  gt_classes = rng.integers(1, 6, num_gt).astype(np.int32)  # classes 6..8 never have truth
  if num_gt >= 3:  # a duplicate: equal IoUs exercise COCOeval's tie rule
    gt[2], gt[1], gt_classes[2] = gt[1], gt[1], gt_classes[1]
  crowd_xy = rng.uniform([0, 0], [400, 200], (8, 2))
  crowd_boxes = np.concatenate([crowd_xy, crowd_xy + rng.uniform(20, 150, (8, 2))], 1)
  crowd_valid = (rng.random(8) < crowd_fraction) & (num_gt > 0)
  boxes, classes, valid, crowd = metrics.with_crowd_regions(
    _pad(gt, 0.0), _pad(gt_classes, 0), _pad(np.ones(num_gt, bool), False),
    crowd_boxes[crowd_valid].astype(np.float32), np.arange(1, 9)[crowd_valid],
  )  # fmt: skip
  # Detections: ground truth (crowd included) jittered at several scales, plus clutter.
  sources = np.flatnonzero(valid)
  if len(sources):
    pick = rng.choice(sources, num_dt)
    noise = rng.choice([1.0, 3.0, 8.0, 20.0], (num_dt, 1)) * rng.normal(size=(num_dt, 4))
    dt, dt_classes = boxes[pick] + noise, classes[pick].copy()
  else:
    dt, dt_classes = rng.uniform(0, 300, (num_dt, 4)), rng.integers(1, 8, num_dt)
  clutter = rng.random(num_dt) < 0.2
  dt[clutter] = rng.uniform(0, 300, (clutter.sum(), 4))
  dt_classes = np.where(rng.random(num_dt) < 0.15, rng.integers(1, 8, num_dt), dt_classes)
  dt = np.concatenate([np.minimum(dt[:, :2], dt[:, 2:]), np.maximum(dt[:, :2], dt[:, 2:])], 1)
  scores = np.round(rng.random(num_dt), 1)  # rounded: many ties, so the sort order matters
  if num_dt >= 2:
    dt[1], dt_classes[1], scores[1] = dt[0], dt_classes[0], scores[0]
  garbage = np.array([[9.0, 9.0, 1.0, 1.0]], np.float32)  # inverted: only valid=False may hold it
  return {
    "pred_boxes": np.concatenate([dt.astype(np.float32), np.repeat(garbage, _PAD, 0)]),
    "pred_scores": _pad(scores.astype(np.float32), 0.0),
    "pred_classes": _pad(dt_classes.astype(np.int32), 0),
    "pred_valid": _pad(np.ones(num_dt, bool), False),
    "gt_boxes": boxes, "gt_classes": classes, "gt_valid": valid, "gt_crowd": crowd,
  }  # fmt: skip


def _independent_coco(images, agnostic=False):
  """COCO gt dict and results list built directly from the raw arrays (not via metrics)."""
  dataset = {"images": [{"id": i} for i in range(1, len(images) + 1)], "annotations": []}
  dataset["categories"] = [{"id": c, "name": str(c)} for c in ([1] if agnostic else range(1, 9))]
  results = []
  for image_id, im in enumerate(images, 1):
    for box, cls, ok, crowd in zip(
      *(im[k] for k in ("gt_boxes", "gt_classes", "gt_valid", "gt_crowd")), strict=True
    ):
      if ok:
        x1, y1, x2, y2 = (float(v) for v in box)
        dataset["annotations"].append({
          "id": len(dataset["annotations"]) + 1, "image_id": image_id,
          "category_id": 1 if agnostic else int(cls), "bbox": [x1, y1, x2 - x1, y2 - y1],
          "area": (x2 - x1) * (y2 - y1), "iscrowd": int(crowd),
        })  # fmt: skip
    for box, score, cls, ok in zip(
      *(im[k] for k in ("pred_boxes", "pred_scores", "pred_classes", "pred_valid")), strict=True
    ):
      if ok:
        x1, y1, x2, y2 = (float(v) for v in box)
        results.append({
          "image_id": image_id, "category_id": 1 if agnostic else int(cls),
          "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score),
        })  # fmt: skip
  return dataset, results


def _exports(images, agnostic=False, max_per_image=None):
  """Ground truth and results of padded per-image arrays through the adapter's exporters."""
  ids = range(1, len(images) + 1)
  get = lambda key: [im[key] for im in images]
  classes = [np.ones_like(c) for c in get("pred_classes")] if agnostic else get("pred_classes")
  ground_truth = metrics.to_coco_ground_truth(
    ids, get("gt_boxes"), get("gt_classes"), get("gt_crowd"), get("gt_valid")
  )
  results = metrics.to_coco_json(
    ids, get("pred_boxes"), get("pred_scores"), classes, get("pred_valid"), max_per_image
  )
  return ground_truth, results


def _ap(images, **kwargs):
  return metrics.detection_ap(*_exports(images), **kwargs)


def _ar(images, max_proposals=1000, **kwargs):
  ground_truth, results = _exports(images, agnostic=True, max_per_image=max_proposals)
  return metrics.proposal_recall(ground_truth, results, max_proposals, **kwargs)


@pytest.fixture(scope="module")
def detection_images():
  rng = np.random.default_rng(0)
  images = []
  for i in range(24):
    num_gt = 0 if i % 6 == 5 else int(rng.integers(1, 14))  # some images without truth
    num_dt = 0 if i % 7 == 3 else int(rng.integers(1, 60))  # some without detections
    images.append(_random_image(rng, num_gt, num_dt))
  # One image with 130 detections of one class: COCOeval's maxDets=100 applies per class.
  images.append(_random_image(rng, 6, 130))
  images[-1]["pred_classes"][:130] = 1
  return images


_LEVELS = {"L2": (0.0, 900.0), "L3": (900.0, 3600.0), "L4": (3600.0, 1e10), "L9": (1e9, 1e10)}


def test_detection_ap_equals_pycocotools(detection_images):
  ours = _ap(detection_images, area_ranges=_LEVELS)
  ours_per_class = [ours[f"AP50/{n}"] for n in metrics.THING_CLASSES]
  ranges = {"areaRng": [[0, 1e10], *map(list, _LEVELS.values())], "areaRngLbl": ["all", *_LEVELS]}
  coco = _cocoeval(*_independent_coco(detection_images), **{**_AP_PARAMS, **ranges})
  coco_per_class, coco_map = _coco_ap50(coco)
  np.testing.assert_allclose(ours_per_class, coco_per_class, atol=1e-12)
  np.testing.assert_allclose(ours["mAP50"], coco_map, atol=1e-12)
  for area, level in enumerate(_LEVELS, start=1):
    _, coco_level = _coco_ap50(coco, area=area)
    if np.isnan(coco_level):  # no ground truth in the range: no key at all
      assert f"AP50/{level}" not in ours, level
    else:
      assert ours[f"AP50/{level}"] == pytest.approx(coco_level, abs=1e-12), level
  assert {"AP50/L2", "AP50/L3", "AP50/L4"} <= set(ours) and "AP50/L9" not in ours
  # Classes 1..5 have ground truth; 6 and 7 only false positives, 8 nothing: left out.
  assert np.isfinite(ours_per_class[:5]).all() and np.isnan(ours_per_class[5:]).all()
  assert 0.05 < ours["mAP50"] < 0.95  # the data is neither trivial nor hopeless


def test_exports_match_independent_construction(detection_images):
  ground_truth, results = _exports(detection_images)
  gt, dt = _independent_coco(detection_images)
  assert results == dt
  assert ground_truth["annotations"] == gt["annotations"]
  assert ground_truth["images"] == gt["images"]
  assert [c["name"] for c in ground_truth["categories"]] == list(metrics.THING_CLASSES)
  named = metrics.to_coco_ground_truth(
    [1, 2], [np.zeros((0, 4))] * 2, [np.zeros(0)] * 2, [np.zeros(0)] * 2,
    file_names=["a_000001", "b_000002"], image_size=(64, 128),
  )  # fmt: skip
  assert named["images"] == [
    {"id": 1, "file_name": "a_000001", "height": 64, "width": 128},
    {"id": 2, "file_name": "b_000002", "height": 64, "width": 128},
  ]


def test_max_detections_counts_per_image_and_class():
  # 100 false positives of class 1 outrank its true positive; class 2's single true positive
  # comes last overall. COCOeval caps per (image, class): class 1 loses its TP, class 2 keeps it.
  gt = np.array([[0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
  far = np.tile(np.array([[200, 200, 210, 210]], np.float32), (100, 1))
  im = {
    "pred_boxes": np.concatenate([far, gt]), "pred_scores": np.r_[np.full(100, 0.9), 0.5, 0.1],
    "pred_classes": np.r_[np.ones(101), 2].astype(int), "pred_valid": np.ones(102, bool),
    "gt_boxes": gt, "gt_classes": np.array([1, 2]), "gt_valid": np.ones(2, bool),
    "gt_crowd": np.zeros(2, bool),
  }  # fmt: skip
  ours = _ap([im])
  assert ours["AP50/person"] == 0.0 and ours["AP50/rider"] == pytest.approx(1.0, abs=1e-12)
  assert ours["mAP50"] == pytest.approx(0.5, abs=1e-12)


def _one_class_image(pred_boxes, pred_scores, gt_boxes, gt_crowd):
  d, g = len(pred_boxes), len(gt_boxes)
  return {
    "pred_boxes": np.array(pred_boxes, np.float32), "pred_scores": np.array(pred_scores),
    "pred_classes": np.ones(d, int), "pred_valid": np.ones(d, bool),
    "gt_boxes": np.array(gt_boxes, np.float32), "gt_classes": np.ones(g, int),
    "gt_valid": np.ones(g, bool), "gt_crowd": np.array(gt_crowd, bool),
  }  # fmt: skip


@pytest.mark.parametrize(
  ("pred_boxes", "pred_scores", "gt_crowd", "expected"),
  [
    # FP (0.9) before TP (0.8): precision 1/2 at every recall threshold.
    ([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8], [False, False], 0.5),
    # The FP lies inside a crowd region (intersection / detection area = 1): ignored.
    ([[50, 50, 60, 60], [0, 0, 10, 10]], [0.9, 0.8], [False, True], 1.0),
    # Equal scores: the stable sort keeps the given order, so FP-then-TP gives 1/2 ...
    ([[50, 50, 60, 60], [0, 0, 10, 10]], [0.7, 0.7], [False, False], 0.5),
    # ... and TP-then-FP gives 1.
    ([[0, 0, 10, 10], [50, 50, 60, 60]], [0.7, 0.7], [False, False], 1.0),
    # IoU exactly 0.5 (box half the ground truth) matches: COCOeval compares with >=.
    ([[0, 0, 5, 10]], [0.3], [False, False], 1.0),
  ],
)
def test_hand_computed_ap(pred_boxes, pred_scores, gt_crowd, expected):
  # The crowd region is a large box around the false positive.
  im = _one_class_image(pred_boxes, pred_scores, [[0, 0, 10, 10], [40, 40, 80, 80]], gt_crowd)
  if not gt_crowd[1]:
    im["gt_valid"][1] = False
  ground_truth, results = _exports([im])
  ground_truth["categories"] = ground_truth["categories"][:1]
  assert metrics.detection_ap(ground_truth, results)["AP50/person"] == pytest.approx(expected)


def test_two_truths_three_detections():
  # Scores 0.9 TP, 0.8 FP, 0.7 TP: precision 1 up to recall 1/2, then 2/3 up to recall 1.
  # 101-point AP: thresholds 0..0.5 (51 of them) read 1, 0.51..1 (50) read 2/3.
  im = _one_class_image(
    [[0, 0, 10, 10], [100, 100, 110, 110], [20, 20, 30, 31]], [0.9, 0.8, 0.7],
    [[0, 0, 10, 10], [20, 20, 30, 30]], [False, False],
  )  # fmt: skip
  assert _ap([im])["AP50/person"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)


def test_equal_iou_goes_to_the_later_ground_truth():
  # Detection A overlaps both boxes with exactly the same IoU (2/3); COCOeval gives it the
  # later box, so B (which only overlaps that box) becomes a false positive: AP = 51/101.
  im = _one_class_image(
    [[2, 0, 12, 10], [5, 0, 15, 10]], [0.9, 0.8], [[0, 0, 10, 10], [4, 0, 14, 10]], [0, 0]
  )
  assert _ap([im])["AP50/person"] == pytest.approx(51 / 101, abs=1e-12)
  # Thresholds 0.5..0.65 match one box (A's tie), 0.7..0.8 one box (B), 0.85..0.95 none.
  assert _ar([im])["AR@1000"] == pytest.approx(7 / 20)
  assert _ar([im])["AR50@1000"] == pytest.approx(1 / 2)  # IoU 0.5: A matches one box
  coco = _cocoeval(*_independent_coco([im], agnostic=True), **_AR_PARAMS)
  assert _coco_ar(coco) == pytest.approx(7 / 20)


def test_ar50_and_ar_by_hand():
  # Two truths. Proposal 1 covers 62 % of A (IoU 0.62): matched at IoU 0.50, 0.55, 0.60 of the
  # ten thresholds 0.50:0.05:0.95. Proposal 2 covers 45 % of B (IoU 0.45): never matched.
  # AR50@1000 = 1/2 (A of A, B at 0.5); AR@1000 = mean over ten thresholds = (3 * 1/2) / 10.
  im = _one_class_image(
    [[0, 0, 10, 6.2], [50, 50, 60, 54.5]], [0.9, 0.8],
    [[0, 0, 10, 10], [50, 50, 60, 60]], [False, False],
  )  # fmt: skip
  ranges = {"L2": (0.0, 1e10), "L9": (1e9, 1e10)}  # L9 holds no ground truth: no keys
  ours = _ar([im], area_ranges=ranges)
  assert ours == pytest.approx(
    {"AR@1000": 0.15, "AR50@1000": 0.5, "AR@1000/L2": 0.15, "AR50@1000/L2": 0.5}
  )
  assert _ar([im], max_proposals=1)["AR50@1"] == pytest.approx(1 / 2)  # the 0.9 one only


def test_no_detections_at_all(detection_images):
  images = [{**im, "pred_valid": np.zeros_like(im["pred_valid"])} for im in detection_images]
  ours = _ap(images)
  assert _exports(images)[1] == []
  coco_per_class, coco_map = _coco_ap50(_cocoeval(*_independent_coco(images), **_AP_PARAMS))
  assert ours["mAP50"] == coco_map == 0.0
  np.testing.assert_array_equal([ours[f"AP50/{n}"] for n in metrics.THING_CLASSES], coco_per_class)


def test_all_padding_inputs():
  im = {
    "pred_boxes": np.zeros((5, 4)), "pred_scores": np.zeros(5), "pred_classes": np.zeros(5, int),
    "pred_valid": np.zeros(5, bool), "gt_boxes": np.zeros((7, 4)), "gt_classes": np.zeros(7, int),
    "gt_valid": np.zeros(7, bool), "gt_crowd": np.zeros(7, bool),
  }  # fmt: skip
  assert all(np.isnan(v) for v in _ap([im] * 3, area_ranges=_LEVELS).values())
  assert set(_ar([im] * 3, area_ranges=_LEVELS)) == {"AR@1000", "AR50@1000"}  # no level keys
  assert np.isnan(_ar([im] * 3)["AR@1000"]) and np.isnan(_ar([im] * 3)["AR50@1000"])
  ground_truth, results = _exports([im] * 3)
  assert results == [] and ground_truth["annotations"] == [] and len(ground_truth["images"]) == 3


def test_bad_inputs_are_named():
  ok = _one_class_image([[0, 0, 10, 10]], [0.5], [[0, 0, 10, 10]], [False])
  with pytest.raises(ValueError, match="ground-truth classes"):
    _exports([{**ok, "gt_classes": np.array([0])}])
  with pytest.raises(ValueError, match="ground-truth box"):
    _exports([{**ok, "gt_boxes": np.array([[10.0, 0, 0, 10]])}])
  with pytest.raises(ValueError, match="detection scores must have shape"):
    _exports([{**ok, "pred_scores": np.array([0.5, 0.4])}])
  with pytest.raises(ValueError, match="finite"):
    _exports([{**ok, "pred_scores": np.array([np.nan])}])
  with pytest.raises(ValueError, match=r"config\.model\.scale_case"):
    metrics.level_area_ranges("case4")


@pytest.fixture(scope="module")
def proposal_images():
  rng = np.random.default_rng(1)
  images = []
  for i in range(20):
    num_gt = 0 if i == 4 else int(rng.integers(1, 12))
    num_dt = {2: 0, 6: 1100, 13: 1050}.get(i, int(rng.integers(20, 300)))  # > 1000: truncated
    im = _random_image(rng, num_gt, num_dt)
    im["pred_classes"] = np.where(im["pred_valid"], 1, 0)
    im["gt_classes"] = np.where(im["gt_valid"], 1, 0)
    images.append(im)
  return images


def test_proposal_recall_equals_pycocotools(proposal_images):
  ours = _ar(proposal_images, area_ranges=_LEVELS)
  ranges = {"areaRng": [[0, 1e10], *map(list, _LEVELS.values())], "areaRngLbl": ["all", *_LEVELS]}
  coco = _cocoeval(*_independent_coco(proposal_images, agnostic=True), **{**_AR_PARAMS, **ranges})
  assert ours["AR@1000"] == pytest.approx(_coco_ar(coco), abs=1e-12)
  # pycocotools' recall at its first threshold, IoU 0.5.
  assert ours["AR50@1000"] == pytest.approx(coco.eval["recall"][0, 0, 0, 0], abs=1e-12)
  for area, level in enumerate(_LEVELS, start=1):
    if np.isnan(_coco_ar(coco, area)):
      assert f"AR@1000/{level}" not in ours and f"AR50@1000/{level}" not in ours
    else:
      assert ours[f"AR@1000/{level}"] == pytest.approx(_coco_ar(coco, area), abs=1e-12)
      recall50 = coco.eval["recall"][0, 0, area, 0]
      assert ours[f"AR50@1000/{level}"] == pytest.approx(recall50, abs=1e-12)
  assert 0.1 < ours["AR@1000"] < ours["AR50@1000"] < 1 and "AR@1000/L9" not in ours
  # Truncation matters on this data: a 100-proposal cap gives a lower recall.
  assert _ar(proposal_images, max_proposals=100)["AR@100"] < ours["AR@1000"]


def test_top_proposals_by_score_are_exported():
  boxes = np.array([[0, 0, 10, 10], [1, 1, 9, 9], [2, 2, 8, 8], [3, 3, 7, 7]], np.float32)
  scores = np.array([0.1, 0.9, 0.5, 0.9])
  valid = np.array([True, True, True, False])
  (exported,) = [metrics.to_coco_json([7], [boxes], [scores], [np.ones(4)], [valid], 2)]
  # The two best valid ones, in the given order: box 1 (0.9) and box 2 (0.5).
  assert [r["bbox"] for r in exported] == [[1.0, 1.0, 8.0, 8.0], [2.0, 2.0, 6.0, 6.0]]
  assert [r["score"] for r in exported] == [0.9, 0.5]


def test_level_area_ranges_follow_the_scale_table():
  ranges = metrics.level_area_ranges("case1", 0.5)
  assert list(ranges) == ["L2", "L3", "L4", "L5", "L6"]
  # case1 sides 32, 64, 128, 256 px at 512x1024, halved: areas 16^2, 32^2, 64^2, 128^2.
  lows = [0.0, 16.0**2, 32.0**2, 64.0**2, 128.0**2]
  assert [low for low, _ in ranges.values()] == lows
  for (_, high), next_low in zip(list(ranges.values())[:-1], lows[1:], strict=True):
    assert high < next_low and np.nextafter(high, np.inf) == next_low  # [low, high): disjoint
  assert ranges["L6"][1] == 1e10
  assert metrics.level_area_ranges("none") == metrics.level_area_ranges("case1")
  case2 = metrics.level_area_ranges("case2")
  assert case2["L5"] == case2["L6"] == (448.0**2, 1e10)


def test_levels_score_like_pycocotools_by_hand():
  # case1 at size_scale 1/8: L2 sides < 4, L3 [4, 8), L4 [8, 16), L5 [16, 32), L6 >= 32 px.
  # Ground truth: one 6x6 box (L3), one 12x12 (L4); a 12x12 false positive too, and a 20x20
  # false positive that belongs to L5, where there is no ground truth: L5 has no key.
  ranges = metrics.level_area_ranges("case1", 1 / 8)
  im = _one_class_image(
    [[0, 0, 6, 6], [50, 50, 62, 62], [100, 0, 120, 20], [20, 20, 32, 32]],
    [0.9, 0.8, 0.7, 0.6], [[0, 0, 6, 6], [20, 20, 32, 32]], [False, False],
  )  # fmt: skip
  ours = _ap([im], area_ranges=ranges)
  # L3: only the 6x6 box counts, matched first: AP 1. L4: FP (0.8) before TP (0.6): 1/2.
  assert ours["AP50/L3"] == pytest.approx(1.0) and ours["AP50/L4"] == pytest.approx(0.5)
  assert {k for k in ours if "/L" in k} == {"AP50/L3", "AP50/L4"}
  params = {**_AP_PARAMS, "areaRng": [[0, 1e10], *map(list, ranges.values())],
            "areaRngLbl": ["all", *ranges]}  # fmt: skip
  coco = _cocoeval(*_independent_coco([im]), **params)
  assert _coco_ap50(coco, area=2)[1] == pytest.approx(1.0)
  assert _coco_ap50(coco, area=3)[1] == pytest.approx(0.5)
  assert np.isnan(_coco_ap50(coco, area=4)[1])
  recall = _ar([im], area_ranges=ranges)
  assert recall["AR@1000/L3"] == recall["AR@1000/L4"] == pytest.approx(1.0)
  assert recall["AR50@1000/L3"] == recall["AR50@1000/L4"] == pytest.approx(1.0)
  assert {k for k in recall if "/L" in k} == {
    "AR@1000/L3", "AR@1000/L4", "AR50@1000/L3", "AR50@1000/L4"
  }  # fmt: skip


def test_confusion_matrix_hand_computed():
  # K = 4 (+ ignore 255). Class 3 only in a prediction, never in ground truth.
  gt = np.array([[0, 0, 1, 255], [2, 2, 1, 1], [0, 255, 255, 255]])
  pred = np.array([[0, 1, 1, 0], [2, 0, 1, 1], [3, 2, 2, 2]])
  expected = np.array([[1, 1, 0, 1], [0, 3, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
  cm = metrics.ConfusionMatrix(4)
  cm.add(pred, gt)
  np.testing.assert_array_equal(cm.matrix, expected)
  result = cm.result()
  # IoU = TP / (row + column - TP): 1/(3+2-1), 3/(3+4-3), 1/(2+1-1), 0/(0+1-0).
  ious = [1 / 4, 3 / 4, 1 / 2, 0.0]
  np.testing.assert_allclose([result[f"IoU/{c}"] for c in "0123"], ious)
  assert result["mIoU"] == pytest.approx(np.mean(ious))
  assert result["pixel_accuracy"] == pytest.approx(5 / 8)
  # Class 3 absent from prediction and truth alike: zero denominator, left out of the mean.
  cm = metrics.ConfusionMatrix(4)
  cm.add(np.where(pred == 3, 0, pred), gt)
  result = cm.result()
  assert np.isnan(result["IoU/3"])
  assert result["mIoU"] == pytest.approx(np.mean([2 / 4, 3 / 4, 1 / 2]))


def test_binary_miou_star():
  gt = np.array([0, 0, 1, 1, 1, 255])
  pred = np.array([0, 1, 1, 1, 0, 1])
  cm = metrics.ConfusionMatrix(2)
  cm.add(pred, gt)
  result = cm.result()
  # background 1 / (2 + 2 - 1); foreground 2 / (3 + 3 - 2).
  assert result["IoU/background"] == pytest.approx(1 / 3)
  assert result["IoU/foreground"] == pytest.approx(1 / 2)
  assert result["mIoU"] == pytest.approx(5 / 12)


def test_jitted_update_equals_host_and_vmaps():
  rng = np.random.default_rng(2)
  gt = rng.integers(0, 19, (2, 16, 32))
  gt[rng.random(gt.shape) < 0.2] = 255
  pred = rng.integers(0, 19, (2, 16, 32))
  example_mask = np.array([True, False])  # the second example is padding
  host = metrics.ConfusionMatrix(19)
  host.add(pred, gt, mask=example_mask)
  jitted = _cm_jit(jnp.asarray(pred), jnp.asarray(gt), 19, 255, jnp.asarray(example_mask))
  np.testing.assert_array_equal(np.asarray(jitted), host.matrix)
  # Reference by hand for the first example only.
  keep = gt[0] != 255
  reference = np.zeros((19, 19), int)
  np.add.at(reference, (gt[0][keep], pred[0][keep]), 1)
  np.testing.assert_array_equal(host.matrix, reference)
  per_example = jax.vmap(lambda p, g: metrics.confusion_matrix_update(p, g, 19))(pred, gt)
  summed = metrics.ConfusionMatrix(19)
  summed.add_matrix(per_example.sum(0))
  unmasked = metrics.ConfusionMatrix(19)
  unmasked.add(pred, gt)
  np.testing.assert_array_equal(summed.matrix, unmasked.matrix)
  assert set(summed.result()) >= {"mIoU", "IoU/traffic light", "IoU/bicycle", "pixel_accuracy"}


def test_confusion_matrix_rejects_unknown_labels():
  cm = metrics.ConfusionMatrix(19)
  with pytest.raises(ValueError, match="gt label 19"):
    cm.add(np.zeros(3, int), np.array([0, 19, 255]))
  with pytest.raises(ValueError, match="pred label -1"):
    cm.add(np.array([0, -1, 0]), np.array([0, 1, 255]))
  with pytest.raises(ValueError, match="shape"):
    cm.add_matrix(np.zeros((2, 2)))
