"""segrpn_jax.paper.analysis (the numbers behind the figures) against NumPy recounts and
hand-made cases; tests/test_figures.py draws the figures from a run."""

import math

import numpy as np
import pytest
from clu import metric_writers

from segrpn_jax.configs import baseline, case2, segrpn
from segrpn_jax.ops import anchors as anchor_ops
from segrpn_jax.ops import boxes as box_ops
from segrpn_jax.ops import proposals as proposal_ops
from segrpn_jax.ops import scale as scale_ops
from segrpn_jax.paper import analysis


def _iou(a, b):
  """IoU of two boxes, written out."""
  w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = w * h
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def _decode(anchors, deltas, image_size, weights=(1.0, 1.0, 1.0, 1.0)):
  """detectron2's Box2BoxTransform.apply_deltas and Boxes.clip, written out in NumPy."""
  anchors, deltas = np.asarray(anchors, np.float64), np.asarray(deltas, np.float64)
  w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
  cx, cy = anchors[:, 0] + 0.5 * w, anchors[:, 1] + 0.5 * h
  dx, dy = deltas[:, 0] / weights[0], deltas[:, 1] / weights[1]
  clamp = math.log(1000.0 / 16)
  dw, dh = (
    np.minimum(deltas[:, 2] / weights[2], clamp),
    np.minimum(deltas[:, 3] / weights[3], clamp),
  )
  px, py, pw, ph = cx + dx * w, cy + dy * h, w * np.exp(dw), h * np.exp(dh)
  boxes = np.stack([px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2], axis=1)
  boxes[:, 0::2] = boxes[:, 0::2].clip(0, image_size[1])
  boxes[:, 1::2] = boxes[:, 1::2].clip(0, image_size[0])
  return boxes


def _recount(anchors_by_level, deltas, image_size, strides, proposals, gt_boxes, gt_valid):
  """Fig. 3b with plain loops: yellow positions from the decoded box of every anchor, TP/FP of
  the kept proposals, FN = decoded boxes at IoU > 0.5 that filtering dropped."""
  gts = [g for g, v in zip(gt_boxes, gt_valid, strict=True) if v]
  decoded = _decode(np.concatenate(anchors_by_level), deltas, image_size)
  kept = {int(i) for i, v in zip(proposals["anchor_indices"], proposals["valid"], strict=True)
          if v}  # fmt: skip
  out, offset = {}, 0
  for j, (anchors, stride) in enumerate(zip(anchors_by_level, strides, strict=True)):
    h, w = math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride)
    a = len(anchors) // (h * w)
    before = np.zeros((h, w), bool)
    fn = 0
    for n in range(len(anchors)):
      if any(_iou(decoded[offset + n], gt) > 0.5 for gt in gts):
        before[n // a // w, n // a % w] = True
        fn += offset + n not in kept
    tp = fp = 0
    for box, valid, level in zip(*(proposals[k] for k in ("boxes", "valid", "levels")),
                                 strict=True):  # fmt: skip
      if valid and level == j + 2:
        hit = any(_iou(box, gt) > 0.5 for gt in gts)
        tp, fp = tp + hit, fp + (not hit)
    out[j + 2] = (before, tp, fp, fn)
    offset += len(anchors)
  return out


def _check_filtering(got, want):
  assert sorted(got) == sorted(want)
  for level, (before, tp, fp, fn) in want.items():
    np.testing.assert_array_equal(got[level]["before"], before)
    assert (got[level]["num_tp"], got[level]["num_fp"], got[level]["num_fn"]) == (tp, fp, fn)
    assert got[level]["num_before"] == before.sum()
    assert got[level]["num_positive"] == got[level]["num_fn"] + got[level]["num_tp"]
    assert got[level]["tp"].sum() <= tp and got[level]["fp"].sum() <= fp


def test_proposal_filtering_matches_a_loop_recount_from_decoded_proposals():
  size, strides = (32, 64), (4, 8, 16)
  anchors = anchor_ops.generate_anchors(*size, strides, (8, 16, 32))
  rng = np.random.default_rng(0)
  logits = [rng.normal(0, 2, len(a)).astype(np.float32) for a in anchors]
  deltas = [rng.normal(0, 0.3, a.shape).astype(np.float32) for a in anchors]
  got = proposal_ops.generate_proposals(logits, deltas, anchors, size, 40, 60, 0.7)
  proposals = {
    "boxes": np.asarray(got.boxes),
    "valid": np.asarray(got.valid),
    "levels": np.where(got.valid, np.asarray(got.levels) + 2, -1),
    "anchor_indices": np.asarray(got.anchor_indices),
  }
  all_deltas = np.concatenate(deltas)
  decoded = np.asarray(
    box_ops.clip(box_ops.decode(np.concatenate(anchors), all_deltas), *size), np.float64
  )
  np.testing.assert_allclose(decoded, _decode(np.concatenate(anchors), all_deltas, size),
                             rtol=1e-5, atol=1e-4)  # fmt: skip
  gt_boxes = np.array([[4, 4, 14, 12], [20, 2, 52, 30], [40, 10, 48, 18], [0, 0, 0, 0]], float)
  gt_valid = np.array([True, True, True, False])
  result = analysis.proposal_filtering(
    analysis.split_levels(decoded, anchors), size, strides, proposals, gt_boxes, gt_valid
  )
  want = _recount(anchors, all_deltas, size, strides, proposals, gt_boxes, gt_valid)
  _check_filtering(result, want)
  assert sum(r["num_tp"] + r["num_fp"] for r in result.values()) == proposals["valid"].sum()
  # Not a trivial case: yellow positions, kept true positives and dropped ones on some level.
  assert all(sum(r[k] for r in result.values()) > 0 for k in ("num_before", "num_tp", "num_fn"))
  # The yellow set is the proposals' and not the anchors': here the two differ.
  anchor_hits = [analysis.iou_above(a, gt_boxes[gt_valid], 0.5).reshape(*r["before"].shape, -1)
                 .any(-1) for a, r in zip(anchors, result.values(), strict=True)]  # fmt: skip
  assert any((h != r["before"]).any() for h, r in zip(anchor_hits, result.values(), strict=True))


def test_scale_division_follows_level_membership():
  instance_map = np.zeros((64, 128), np.int32)
  boxes = np.array([[0, 0, 20, 20], [30, 0, 80, 50], [90, 10, 120, 60], [0, 0, 0, 0]], float)
  for k, (x1, y1, x2, y2) in enumerate(boxes[:3].astype(int)):
    instance_map[y1:y2, x1:x2] = k + 1
  valid = np.array([True, True, True, False])
  crowd = np.zeros_like(instance_map, bool)
  # sides 20, 50, ~38.7 at size_scale 1: case1 puts them on L2, L3, L3; case3 on L2, L3, L2.
  d1 = analysis.scale_division(instance_map, boxes, valid, crowd, "case1", 1.0)
  np.testing.assert_array_equal(d1["counts"], [1, 2, 0, 0, 0])
  d3 = analysis.scale_division(instance_map, boxes, valid, crowd, "case3", 1.0)
  np.testing.assert_array_equal(d3["counts"], [2, 1, 0, 0, 0])
  for case in ("case1", "case2", "case3"):
    d = analysis.scale_division(instance_map, boxes, valid, crowd, case, 0.5)
    member = np.asarray(scale_ops.level_membership(boxes, case, 0.5, valid=valid))
    np.testing.assert_array_equal(d["membership"], member)
    for j in range(5):
      want = np.isin(instance_map, 1 + np.flatnonzero(member[:, j]))
      np.testing.assert_array_equal(d["pixels"][j], want)
      # The level target is the any-pixel pooling of the level's pixels to its stride.
      s = (4, 8, 16, 32, 64)[j]
      padded = np.zeros((-(-64 // s) * s, -(-128 // s) * s), bool)
      padded[:64, :128] = want
      pooled = padded.reshape(padded.shape[0] // s, s, -1, s).any(axis=(1, 3))
      np.testing.assert_array_equal(d["targets"][j], pooled)
    np.testing.assert_array_equal(d["ground_truth"], instance_map > 0)


def test_missed_objects_on_a_hand_made_image():
  # Sides 10 (small), 20, 20 and 30: gt 0 is found (IoU 0.81); a detection on gt 1 below the
  # score threshold does not count; gts 1-3 are missed, and large from side 20.
  gt = np.array(
    [[0, 0, 10, 10], [20, 0, 40, 20], [50, 0, 70, 20], [80, 0, 110, 30], [0] * 4], float
  )
  gt_valid = np.array([True, True, True, True, False])
  det = np.array([[1, 1, 10, 10], [20, 0, 40, 20], [0, 0, 0, 0]], float)
  scores, det_valid = np.array([0.9, 0.3, 0.0]), np.array([True, True, False])
  class_agnostic, semantic = np.zeros((30, 120)), np.zeros((30, 120))
  class_agnostic[:, 20:32] = 0.9  # 60 % of gt 1
  semantic[:, 20:27] = 0.9  # 35 % of gt 1
  class_agnostic[:, 50:58] = 0.9  # 40 % of gt 2 ...
  semantic[:10, 50:70] = 0.8  # ... and 50 % of it
  semantic[:, 80:90] = 0.6  # a third of gt 3
  maps = {"class-agnostic": class_agnostic, "semantic": semantic}
  r = analysis.missed_objects(gt, gt_valid, det, scores, det_valid, maps, min_side=20)
  np.testing.assert_array_equal(r["detected"], [True, False, False, False, False])
  np.testing.assert_array_equal(r["large_missed"], [False, True, True, True, False])
  np.testing.assert_allclose(r["coverage"]["class-agnostic"][:4], [0.0, 0.6, 0.4, 0.0])
  np.testing.assert_allclose(r["coverage"]["semantic"][:4], [0.0, 0.35, 0.5, 1 / 3])
  np.testing.assert_array_equal(r["recovered_by"]["class-agnostic"], [0, 1, 0, 0, 0])
  np.testing.assert_array_equal(r["recovered_by"]["semantic"], [0, 0, 1, 0, 0])
  np.testing.assert_array_equal(r["recovered"], [False, True, True, False, False])
  counts = [r[k] for k in ("num_gt", "num_shown", "num_missed", "num_large", "num_large_missed",
                           "num_recovered")]  # fmt: skip
  assert counts == [4, 1, 3, 3, 3, 2]
  assert r["shown"].tolist() == [True, False, False]
  # From side 21 gts 1 and 2 (side 20) are not large: only gt 3 is, and nothing recovers it.
  r = analysis.missed_objects(gt, gt_valid, det, scores, det_valid, maps, min_side=21)
  assert (r["num_large_missed"], r["num_recovered"]) == (1, 0)
  # Fractional boxes: pixels whose centre is inside (rows 0-1, columns 0-2: half in row 0, which
  # the mask leaves out); a box outside the image covers nothing.
  mask = np.ones((4, 4), bool)
  mask[0] = False
  np.testing.assert_allclose(
    analysis.box_coverage(np.array([[0.4, 0.4, 2.6, 2.4], [5, 5, 9, 9]]), mask), [0.5, 0.0]
  )
  np.testing.assert_allclose(analysis.box_side(np.array([[0, 0, 16, 4], [2, 2, 1, 9]])), [8, 0])


def test_run_labels_name_the_setting_and_fusion():
  configs = [
    baseline.get_config(),
    segrpn.get_config(),
    segrpn.get_config("no_rpn_mask"),
    case2.get_config("roi"),
    case2.get_config("roi"),
  ]
  assert analysis.run_labels(configs) == [
    "baseline",
    "SegRPN (no scale division), fusion roi+rpn",
    "SegRPN without RPN_mask (no scale division)",
    "SegRPN case2, fusion roi (run 1)",
    "SegRPN case2, fusion roi (run 2)",
  ]


def _write_events(workdir, rows):
  writer = metric_writers.create_default_writer(workdir)
  for step, scalars in rows:
    writer.write_scalars(step, scalars)
  writer.flush()
  writer.close()


def test_curves_read_back_from_event_files(tmp_path):
  rows = [
    (s, {"train/fg_rois_per_2000": 100.0 * s, "train/rpn_det/objectness": 1.0 / s,
         "train/rpn_det/box": 0.5, "train/rpn_mask/objectness": 2.0 / s,
         "train/rpn_mask/box": 0.25 * s})
    for s in (10, 20, 30)
  ]  # fmt: skip
  _write_events(str(tmp_path / "run"), rows)
  steps, values = analysis.fg_roi_series(str(tmp_path / "run"))
  np.testing.assert_array_equal(steps, [10, 20, 30])
  np.testing.assert_allclose(values, [1000, 2000, 3000])
  losses = analysis.loss_series(str(tmp_path / "run"))
  np.testing.assert_allclose(losses["train/rpn_mask/objectness"][1], [0.2, 0.1, 2 / 30], rtol=1e-6)
  np.testing.assert_allclose(losses["train/rpn_mask/box"][1], [2.5, 5.0, 7.5])
  # An older run with only the fraction; a baseline run without RPN_mask losses.
  _write_events(str(tmp_path / "old"), [(5, {"train/fg_roi_fraction": 0.25,
                                             "train/rpn_det/box": 1.0})])  # fmt: skip
  np.testing.assert_allclose(analysis.fg_roi_series(str(tmp_path / "old"))[1], [500.0])
  with pytest.raises(ValueError, match="needs a SegRPN run"):
    analysis.loss_series(str(tmp_path / "old"))
  with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
    analysis.read_scalars(str(tmp_path))
