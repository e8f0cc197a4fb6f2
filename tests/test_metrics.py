"""Metrics against pycocotools' COCOeval and hand-computed cases."""

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


def _coco_ap50(ev, num_classes=8):
  """Per-class AP50 (NaN for classes without ground truth) and their mean, from COCOeval."""
  precision = ev.eval["precision"][0, :, :, 0, 0]  # [R, K]
  per_class = [p.mean() if (p > -1).all() else np.nan for p in precision.T]
  assert len(per_class) == num_classes
  valid = precision[precision > -1]
  return per_class, (valid.mean() if valid.size else np.nan)


def _coco_ar(ev):
  recall = ev.eval["recall"][:, 0, 0, 0]
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
    crowd_boxes.astype(np.float32), crowd_valid,
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


def test_detection_ap_equals_cocoeval(detection_images):
  ap = metrics.DetectionAP()
  for im in detection_images:
    ap.add(**im)
  ours = ap.result()
  ours_per_class = [ours[f"AP50/{n}"] for n in metrics.THING_CLASSES]
  gt, dt = _independent_coco(detection_images)
  for dataset, results in ((gt, dt), (ap.coco_ground_truth(), ap.coco_detections())):
    coco_per_class, coco_map = _coco_ap50(_cocoeval(dataset, results, **_AP_PARAMS))
    np.testing.assert_allclose(ours_per_class, coco_per_class, atol=1e-6)
    np.testing.assert_allclose(ours["mAP50"], coco_map, atol=1e-6)
  # Classes 1..5 have ground truth; 6 and 7 only false positives, 8 nothing: left out.
  assert np.isfinite(ours_per_class[:5]).all() and np.isnan(ours_per_class[5:]).all()
  assert 0.05 < ours["mAP50"] < 0.95  # the data is neither trivial nor hopeless


def test_exports_match_independent_construction(detection_images):
  ap = metrics.DetectionAP()
  for im in detection_images:
    ap.add(**im)
  gt, dt = _independent_coco(detection_images)
  assert ap.coco_detections() == dt
  exported = ap.coco_ground_truth()
  assert exported["annotations"] == gt["annotations"] and exported["images"] == gt["images"]
  assert [c["name"] for c in exported["categories"]] == list(metrics.THING_CLASSES)


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
  ap = metrics.DetectionAP(max_detections=100)
  ap.add(**im)
  ours = ap.result()
  assert ours["AP50/person"] == 0.0 and ours["AP50/rider"] == pytest.approx(1.0, abs=1e-12)
  assert ours["mAP50"] == pytest.approx(0.5, abs=1e-12)
  coco_per_class, _ = _coco_ap50(_cocoeval(*_independent_coco([im]), **_AP_PARAMS))
  np.testing.assert_allclose(coco_per_class[:2], [0.0, 1.0])


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
  ap = metrics.DetectionAP(num_classes=1)
  ap.add(**im)
  assert ap.result()["AP50/1"] == pytest.approx(expected, abs=1e-12)
  coco_per_class, _ = _coco_ap50(_cocoeval(*_independent_coco([im]), **_AP_PARAMS))
  assert coco_per_class[0] == pytest.approx(expected, abs=1e-12)


def test_equal_iou_goes_to_the_later_ground_truth():
  # Detection A overlaps both boxes with exactly the same IoU (2/3); COCOeval gives it the
  # later box, so B (which only overlaps that box) becomes a false positive: AP = 51/101.
  im = _one_class_image(
    [[2, 0, 12, 10], [5, 0, 15, 10]], [0.9, 0.8], [[0, 0, 10, 10], [4, 0, 14, 10]], [0, 0]
  )
  ap, ar = metrics.DetectionAP(num_classes=1), metrics.ProposalRecall()
  ap.add(**im)
  ar.add(im["pred_boxes"], im["pred_valid"], im["gt_boxes"], im["gt_valid"], im["gt_crowd"])
  assert ap.result()["AP50/1"] == pytest.approx(51 / 101, abs=1e-12)
  coco_per_class, _ = _coco_ap50(_cocoeval(*_independent_coco([im]), **_AP_PARAMS))
  assert coco_per_class[0] == pytest.approx(51 / 101, abs=1e-12)
  coco = _cocoeval(*_independent_coco([im], agnostic=True), **_AR_PARAMS)
  # Thresholds 0.5..0.65 match one box (A's tie), 0.7..0.8 one box (B), 0.85..0.95 none.
  assert _coco_ar(coco) == pytest.approx(7 / 20)
  assert ar.result()["AR@1000"] == pytest.approx(7 / 20)


def test_area_range_all_ignores_boxes_above_1e10():
  # COCO's 'all' range ends at 1e5**2: a bigger ground-truth box is ignored (not missed), and
  # so is a bigger unmatched detection (not a false positive); one perfect match is left.
  huge_gt, huge_fp = [100, 100, 200100, 100100], [300000, 0, 500000, 100000]
  im = _one_class_image([huge_fp, [0, 0, 10, 10]], [0.95, 0.5], [[0, 0, 10, 10], huge_gt], [0, 0])
  ap = metrics.DetectionAP(num_classes=1)
  ap.add(**im)
  assert ap.result()["AP50/1"] == pytest.approx(1.0, abs=1e-12)
  coco_per_class, _ = _coco_ap50(_cocoeval(*_independent_coco([im]), **_AP_PARAMS))
  assert coco_per_class[0] == pytest.approx(1.0, abs=1e-12)


def test_no_detections_at_all(detection_images):
  ap = metrics.DetectionAP()
  images = [{**im, "pred_valid": np.zeros_like(im["pred_valid"])} for im in detection_images]
  for im in images:
    ap.add(**im)
  ours = ap.result()
  assert ap.coco_detections() == []
  coco_per_class, coco_map = _coco_ap50(_cocoeval(*_independent_coco(images), **_AP_PARAMS))
  assert ours["mAP50"] == coco_map == 0.0
  np.testing.assert_array_equal([ours[f"AP50/{n}"] for n in metrics.THING_CLASSES], coco_per_class)


def test_all_padding_inputs():
  ap, ar = metrics.DetectionAP(), metrics.ProposalRecall()
  for _ in range(3):
    ap.add(
      np.zeros((5, 4)), np.zeros(5), np.zeros(5, int), np.zeros(5, bool),
      np.zeros((7, 4)), np.zeros(7, int), np.zeros(7, bool), np.zeros(7, bool),
    )  # fmt: skip
    ar.add(np.zeros((5, 4)), np.zeros(5, bool), np.zeros((7, 4)), np.zeros(7, bool), np.zeros(7))
  assert all(np.isnan(v) for v in ap.result().values())
  assert np.isnan(ar.result()["AR@1000"])
  assert ap.coco_detections() == [] and ap.coco_ground_truth()["annotations"] == []
  assert len(ap.coco_ground_truth()["images"]) == 3


def test_bad_inputs_are_named():
  ap = metrics.DetectionAP()
  ok = _one_class_image([[0, 0, 10, 10]], [0.5], [[0, 0, 10, 10]], [False])
  with pytest.raises(ValueError, match="pred classes"):
    ap.add(**{**ok, "pred_classes": np.array([0])})
  with pytest.raises(ValueError, match="gt box"):
    ap.add(**{**ok, "gt_boxes": np.array([[10.0, 0, 0, 10]])})
  with pytest.raises(ValueError, match="pred scores must have shape"):
    ap.add(**{**ok, "pred_scores": np.array([0.5, 0.4])})
  with pytest.raises(ValueError, match="finite"):
    ap.add(**{**ok, "pred_scores": np.array([np.nan])})


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


def _add_proposals(recall, im, with_scores):
  recall.add(
    im["pred_boxes"], im["pred_valid"], im["gt_boxes"], im["gt_valid"], im["gt_crowd"],
    scores=im["pred_scores"] if with_scores else None,
  )  # fmt: skip


def test_proposal_recall_equals_cocoeval(proposal_images):
  ar = metrics.ProposalRecall(max_proposals=1000)
  for im in proposal_images:
    _add_proposals(ar, im, with_scores=True)
  ours = ar.result()["AR@1000"]
  independent = _cocoeval(*_independent_coco(proposal_images, agnostic=True), **_AR_PARAMS)
  exported = _cocoeval(ar.coco_ground_truth(), ar.coco_detections(), **_AR_PARAMS)
  np.testing.assert_allclose(ours, _coco_ar(independent), atol=1e-6)
  np.testing.assert_allclose(ours, _coco_ar(exported), atol=1e-6)
  assert 0.1 < ours < 0.95
  # Truncation matters on this data: a 100-proposal cap gives a lower recall.
  ar100 = metrics.ProposalRecall(max_proposals=100)
  for im in proposal_images:
    _add_proposals(ar100, im, with_scores=True)
  assert ar100.result()["AR@100"] < ours


def test_proposal_recall_without_scores_uses_given_order(proposal_images):
  # Without scores the first 1000 valid proposals count: COCO with descending dummy scores.
  ar = metrics.ProposalRecall(max_proposals=1000)
  images = []
  for im in proposal_images[:8]:
    _add_proposals(ar, im, with_scores=False)
    images.append({**im, "pred_scores": -np.arange(len(im["pred_scores"]), dtype=np.float64)})
  coco = _cocoeval(*_independent_coco(images, agnostic=True), **_AR_PARAMS)
  np.testing.assert_allclose(ar.result()["AR@1000"], _coco_ar(coco), atol=1e-6)


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
