"""segrpn_loss and its terms on hand-made outputs: every normalisation against NumPy arithmetic."""

import jax
import numpy as np
import pytest

from segrpn_jax import losses
from segrpn_jax.configs import default


def bce(x, t):
  """-t log(sigmoid(x)) - (1 - t) log(1 - sigmoid(x)), in float64."""
  x = np.asarray(x, np.float64)
  return np.log1p(np.exp(-x)) + (1 - t) * x


def log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def rpn_case():
  """Two images, five anchors, 4 sampled per image (batch_size_per_image = 4)."""
  rs = np.random.RandomState(0)
  positive = np.array([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0]], bool)
  negative = np.array([[0, 1, 1, 0, 1], [0, 0, 1, 0, 0]], bool)  # image 1: only 3 sampled
  rpn = {
    "logits": rs.randn(2, 5).astype(np.float32),
    "deltas": rs.randn(2, 5, 4).astype(np.float32),
    "positive": positive,
    "negative": negative,
  }
  targets = {"deltas": rs.randn(2, 5, 4).astype(np.float32)}
  return rpn, targets


def test_rpn_losses_divide_by_batch_size_per_image_times_images():
  rpn, targets = rpn_case()
  objectness, box = losses.rpn_losses(rpn, targets, batch_size_per_image=4)
  sampled = rpn["positive"] | rpn["negative"]
  expected_obj = bce(rpn["logits"], rpn["positive"])[sampled].sum() / (4 * 2)
  expected_box = np.abs(rpn["deltas"] - targets["deltas"])[rpn["positive"]].sum() / (4 * 2)
  np.testing.assert_allclose(objectness, expected_obj, rtol=1e-5)
  np.testing.assert_allclose(box, expected_box, rtol=1e-5)
  # Unsampled anchors contribute nothing, whatever their predictions.
  rpn["logits"][0, 3] = rpn["deltas"][0, 3] = 1e4
  np.testing.assert_allclose(losses.rpn_losses(rpn, targets, 4)[0], expected_obj, rtol=1e-5)


def roi_case():
  """One image, 4 ROI slots (3 sampled, 2 foreground), K = 2 classes."""
  rs = np.random.RandomState(1)
  return {
    "cls_logits": rs.randn(1, 4, 3).astype(np.float32),
    "deltas": rs.randn(1, 4, 8).astype(np.float32),
    "gt_classes": np.array([[2, 0, 1, 0]], np.int32),
    "regression_targets": rs.randn(1, 4, 4).astype(np.float32),
    "foreground": np.array([[True, False, True, False]]),
    "sampled": np.array([[True, True, True, False]]),
  }


def test_roi_losses_mean_ce_and_class_specific_l1_over_sampled():
  roi = roi_case()
  cls, box = losses.roi_losses(roi)
  lsm = log_softmax(roi["cls_logits"][0])
  expected_cls = -(lsm[0, 2] + lsm[1, 0] + lsm[2, 1]) / 3
  d, t = roi["deltas"][0], roi["regression_targets"][0]
  # Class 2 uses columns 4..7, class 1 columns 0..3.
  expected_box = (np.abs(d[0, 4:8] - t[0]).sum() + np.abs(d[2, 0:4] - t[2]).sum()) / 3
  np.testing.assert_allclose(cls, expected_cls, rtol=1e-5)
  np.testing.assert_allclose(box, expected_box, rtol=1e-5)


def bilinear_1d(n_in, n_out):
  """[n_out, n_in] half-pixel bilinear weights with edge clamping (align_corners=False)."""
  m = np.zeros((n_out, n_in))
  for o in range(n_out):
    x = min(max((o + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
    lo = int(np.floor(x))
    hi = min(lo + 1, n_in - 1)
    m[o, lo] += 1 - (x - lo)
    m[o, hi] += x - lo
  return m


def test_semantic_loss_upsamples_logits_and_ignores_255():
  rs = np.random.RandomState(2)
  logits = rs.randn(1, 2, 3, 4).astype(np.float32)  # stride 4 of an 8x12 image
  labels = rs.randint(0, 4, (1, 8, 12)).astype(np.int32)
  labels[0, :3, :5] = 255
  up = np.einsum("yh,xw,bhwk->byxk", bilinear_1d(2, 8), bilinear_1d(3, 12), logits)
  lsm = log_softmax(up)
  keep = labels != 255
  expected = -np.take_along_axis(lsm, np.where(keep, labels, 0)[..., None], -1)[..., 0][keep].mean()
  np.testing.assert_allclose(losses.semantic_loss(logits, labels), expected, rtol=1e-5)
  assert float(losses.semantic_loss(logits, np.full_like(labels, 255))) == 0.0


def class_agnostic_config(case):
  config = default.get_config()
  config.model.scale_case = case
  config.model.size_scale = 1.0
  return config


def test_class_agnostic_loss_case_none_with_crowd():
  # 16x16 image, one 4x4 instance in the corner, crowd in the opposite corner; every instance
  # is on every level (case 'none'). Cells at strides 4, 8, 16, 32, 64: 4x4, 2x2, 1x1, 1x1, 1x1.
  instance_map = np.zeros((1, 16, 16), np.int32)
  instance_map[0, :4, :4] = 1
  crowd = np.zeros((1, 16, 16), bool)
  crowd[0, 12:, 12:] = True
  batch = {
    "boxes": np.array([[[0, 0, 4, 4], [0, 0, 0, 0]]], np.float32),
    "valid": np.array([[True, False]]),
    "instance_map": instance_map,
    "crowd": crowd,
  }
  shapes = [(4, 4), (2, 2), (1, 1), (1, 1), (1, 1)]
  logits = [np.ones((1, *s), np.float32) for s in shapes]
  pos, neg = bce(1.0, 1), bce(1.0, 0)
  # Level 2: 1 foreground, 1 crowd (ignored), 14 background cells; level 3: 1 / 1 / 2; levels
  # 4-6: the single cell holds the instance (foreground wins over crowd).
  per_level = [(pos + 14 * neg) / 15, (pos + 2 * neg) / 3, pos, pos, pos]
  got = losses.class_agnostic_loss(logits, batch, class_agnostic_config("none"))
  np.testing.assert_allclose(got, np.mean(per_level), rtol=1e-5)


def test_class_agnostic_loss_case1_targets_only_the_member_level():
  # 64x64 image, one 40x40 instance: case1 puts side 40 on level 3 ([32, 64)) only.
  instance_map = np.zeros((1, 64, 64), np.int32)
  instance_map[0, :40, :40] = 1
  batch = {
    "boxes": np.array([[[0, 0, 40, 40]]], np.float32),
    "valid": np.array([[True]]),
    "instance_map": instance_map,
    "crowd": np.zeros((1, 64, 64), bool),
  }
  logits = [np.ones((1, 64 // s, 64 // s), np.float32) for s in (4, 8, 16, 32, 64)]
  pos, neg = bce(1.0, 1), bce(1.0, 0)
  per_level = [neg, (25 * pos + 39 * neg) / 64, neg, neg, neg]  # 5x5 of the 8x8 cells on level 3
  got = losses.class_agnostic_loss(logits, batch, class_agnostic_config("case1"))
  np.testing.assert_allclose(got, np.mean(per_level), rtol=1e-5)


def test_class_agnostic_map_loss_upsamples_logits_against_the_foreground():
  # 8x8 image: a valid instance in the top-left quarter, pixels of an invalid (padding) id,
  # a crowd corner, an unlabelled strip, and one crowd pixel inside the instance.
  rs = np.random.RandomState(5)
  logits = rs.randn(1, 2, 2).astype(np.float32)  # stride 4 of 8x8
  instance_map = np.zeros((1, 8, 8), np.int32)
  instance_map[0, :4, :4] = 1
  instance_map[0, 4:6, :2] = 2  # valid False: background, as on the per-level targets
  crowd = np.zeros((1, 8, 8), bool)
  crowd[0, 6:, 6:] = True
  crowd[0, 3, 3] = True  # foreground wins over crowd
  semantic = np.zeros((1, 8, 8), np.int32)
  semantic[0, 0, 4:] = 255
  batch = {
    "instance_map": instance_map,
    "valid": np.array([[True, False]]),
    "crowd": crowd,
    "semantic": semantic,
  }
  target, weight = jax.device_get(
    losses.foreground_target(instance_map, batch["valid"], crowd, semantic)
  )
  assert target.sum() == 16 and target[0, :4, :4].all()
  assert weight.sum() == 64 - 4 - 4 and weight[0, 3, 3] == 1  # 4 crowd + 4 unlabelled ignored
  up = np.einsum("yh,xw,bhw->byx", bilinear_1d(2, 8), bilinear_1d(2, 8), logits)
  expected = (weight * bce(up, target)).sum() / weight.sum()
  np.testing.assert_allclose(losses.class_agnostic_map_loss(logits, batch), expected, rtol=1e-5)


def fake_outputs(with_mask=True, with_semantic=True):
  """Outputs of a training forward; with_mask False is the baseline (no RPN_mask, no
  class-agnostic module)."""
  rpn, targets = rpn_case()
  out = {
    "rpn_det": rpn,
    "rpn_targets": targets,
    "roi": {
      **roi_case(),
      "num_fg_proposals": np.array([3.0, 1.0], np.float32),
      "num_valid_proposals": np.array([10.0, 6.0], np.float32),
    },
  }
  if with_semantic:
    out["semantic_logits"] = np.random.RandomState(3).randn(2, 4, 4, 19).astype(np.float32)
  if with_mask:
    mask = dict(rpn)
    mask["logits"] = rpn["logits"] * 0.5
    out["rpn_mask"] = mask
    out["class_agnostic_logits"] = [np.zeros((2, 16 // s, 16 // s), np.float32) for s in (4, 8)]
    out["class_agnostic_logits"] += [np.zeros((2, 1, 1), np.float32)] * 3
    out["class_agnostic_map_logits"] = np.zeros((2, 4, 4), np.float32)
  return out


def fake_batch():
  return {
    "semantic": np.random.RandomState(4).randint(0, 19, (2, 16, 16)).astype(np.int32),
    "boxes": np.zeros((2, 1, 4), np.float32),
    "valid": np.zeros((2, 1), bool),
    "instance_map": np.zeros((2, 16, 16), np.int32),
    "crowd": np.zeros((2, 16, 16), bool),
  }


def test_segrpn_loss_weights_every_part():
  config = default.get_config()
  config.model.rpn.batch_size_per_image = 4
  w = config.loss
  weights = {"rpn_det": 1.0, "rpn_mask": 0.5, "roi_cls": 2.0, "roi_box": 3.0}
  weights.update(semantic=0.25, class_agnostic=4.0, class_agnostic_map=5.0)
  w.update(weights)
  total, parts = losses.segrpn_loss(fake_outputs(), fake_batch(), config)
  parts = jax.device_get(parts)
  expected = (
    1.0 * (parts["rpn_det/objectness"] + parts["rpn_det/box"])
    + 0.5 * (parts["rpn_mask/objectness"] + parts["rpn_mask/box"])
    + 2.0 * parts["roi/cls"]
    + 3.0 * parts["roi/box"]
    + 0.25 * parts["semantic"]
    + 4.0 * parts["class_agnostic"]
    + 5.0 * parts["class_agnostic_map"]
  )
  # Sums and means of float32 terms: rtol 1e-5 (a few float32 roundings in any summation order).
  np.testing.assert_allclose(total, expected, rtol=1e-5)
  assert parts["rpn_mask/objectness"] != pytest.approx(parts["rpn_det/objectness"])
  np.testing.assert_allclose(parts["class_agnostic"], np.log(2), rtol=1e-5)  # logits 0, no fg
  np.testing.assert_allclose(parts["class_agnostic_map"], np.log(2), rtol=1e-5)
  np.testing.assert_allclose(parts["fg_roi_fraction"], 4 / 16, rtol=1e-6)
  np.testing.assert_allclose(parts["fg_rois_per_2000"], 4 / 16 * 2000, rtol=1e-6)


def test_segrpn_loss_baseline_and_faster_rcnn_parts():
  config = default.get_config()
  _, parts = losses.segrpn_loss(fake_outputs(with_mask=False), fake_batch(), config)
  assert set(parts) == {
    "rpn_det/objectness",
    "rpn_det/box",
    "roi/cls",
    "roi/box",
    "semantic",
    "fg_roi_fraction",
    "fg_rois_per_2000",
  }
  total, parts = losses.segrpn_loss(
    fake_outputs(with_mask=False, with_semantic=False), fake_batch(), config
  )
  assert set(parts) == {
    "rpn_det/objectness",
    "rpn_det/box",
    "roi/cls",
    "roi/box",
    "fg_roi_fraction",
    "fg_rois_per_2000",
  }
  np.testing.assert_allclose(
    total, sum(parts[k] for k in parts if not k.startswith("fg_roi")), rtol=1e-5
  )
