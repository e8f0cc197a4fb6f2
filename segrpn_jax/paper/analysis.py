"""The numbers behind the paper's figures, computed on the host in NumPy
(segrpn_jax.paper.figures draws them).

- `rpn_map_images`: per level, the RPN feature maps (channel mean) and objectness (max over a
  position's anchors) of RPN_det, RPN_mask and the fusions (Figs. 1 and 3a).
- `proposal_filtering`: per level, where the anchors that overlap a ground truth sit before
  filtering, and where the true / false positive proposals come from after top-k and NMS
  (Fig. 3b).
- `read_scalars`, `loss_series`, `fg_roi_series`: training curves from a run's TensorBoard event
  files (Figs. 4 and 6).
- `scale_division`: one image's class-agnostic ground truth divided into levels 2..6 by a scale
  case (Fig. 7).
- `missed_objects`: ground truths the detector misses but the class-agnostic map covers (Fig. 5).
- `load_run`, `eval_example`: a run and one evaluation image, with one readable error for a
  workdir, an image index or a run that does not fit the figure.
"""

import glob
import math
import os

import ml_collections
import numpy as np
import tensorflow as tf

from segrpn_jax import api, checkpointing, input_pipeline, pretrained
from segrpn_jax.models import segrpn as segrpn_lib
from segrpn_jax.ops import scale as scale_ops

# ------------------------------------------------------------------------------------------------
# Runs and images.


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a training run was made with (workdir/config.json).

  Args:
    workdir: the run's folder.

  Returns:
    The run's config.

  Raises:
    FileNotFoundError: when `workdir` holds no run.
  """
  if not os.path.exists(os.path.join(workdir, checkpointing.CONFIG_FILE)):
    raise FileNotFoundError(
      f"{workdir} is not a training run (no {checkpointing.CONFIG_FILE}); pass the --workdir "
      "of a `python -m segrpn_jax.main` run."
    )
  return checkpointing.load_config(workdir)


def require_rpn_mask(config: ml_collections.ConfigDict, workdir: str, figure: str) -> None:
  """Raises a readable error when a figure needs RPN_mask but the run is the baseline."""
  if not config.model.class_agnostic:
    raise ValueError(
      f"{workdir} is a baseline run (config.model.class_agnostic False), which has no RPN_mask; "
      f"the {figure} figure needs a SegRPN run (configs/segrpn.py or configs/case*.py)."
    )


def load_run(workdir: str, figure: str, needs_rpn_mask: bool = False):
  """A run's config, model and latest variables, with one readable error when it does not fit.

  Args:
    workdir: the run's folder.
    figure: the figure's name, for the error messages.
    needs_rpn_mask: refuse a baseline run.

  Returns:
    (config, model, variables) as `api.load` returns them.

  Raises:
    FileNotFoundError: no run or no checkpoint in `workdir`.
    ValueError: a baseline run for a figure that needs RPN_mask.
  """
  config = load_config(workdir)
  if needs_rpn_mask:
    require_rpn_mask(config, workdir, figure)
  if not glob.glob(os.path.join(checkpointing.checkpoint_dir(workdir), "*")):
    raise FileNotFoundError(
      f"{workdir} has no checkpoint (nothing in {checkpointing.checkpoint_dir(workdir)}); the "
      f"{figure} figure needs trained weights: train first or pass another --workdir."
    )
  return api.load(workdir)


def eval_example(config: ml_collections.ConfigDict, index: int, split: str | None = None) -> dict:
  """Example `index` of an evaluation split as a batch of one (the batch contract).

  Args:
    config: the run's config (its data section is used).
    index: 0-based position in the split (unshuffled, as the evaluation reads it).
    split: a TFDS split name; None = config.data.eval_split.

  Returns:
    The batch dict with leading axis 1.

  Raises:
    IndexError: when `index` is past the end of the split.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  if split is not None:
    config.data.eval_split = split
  # The run's own eval batch size (it is already a valid multiple of the devices); one example
  # of the right batch is returned.
  data = input_pipeline.create_eval_dataset(config, process_index=0, process_count=1)
  if not 0 <= index < data.num_examples:
    raise IndexError(
      f"image {index} is not in the {config.data.eval_split} split, which has "
      f"{data.num_examples} images; pass --image 0..{data.num_examples - 1}."
    )
  for i, batch in enumerate(data):
    if i == index // data.batch_size:
      j = index % data.batch_size
      return {k: v[j : j + 1] for k, v in batch.items()}
  raise AssertionError("unreachable: the split has fewer batches than examples")


def display_image(image_hxwx3: np.ndarray) -> np.ndarray:
  """A normalised input image (batch contract) back to RGB in [0, 1] for drawing."""
  rgb = np.asarray(image_hxwx3) * np.asarray(pretrained.PIXEL_STD) + np.asarray(
    pretrained.PIXEL_MEAN
  )
  return np.clip(rgb, 0.0, 1.0)


def run_anchors(config: ml_collections.ConfigDict) -> list[np.ndarray]:
  """The per-level [H_l * W_l * A, 4] anchors of a run (P2..P6, (y, x, anchor) order)."""
  a = config.model.anchor
  return list(
    segrpn_lib.anchors_for(
      tuple(config.data.image_size),
      tuple(a.strides),
      tuple(a.sizes),
      tuple(a.aspect_ratios),
      float(a.offset),
    )
  )


# ------------------------------------------------------------------------------------------------
# Figs. 1 and 3a: RPN maps.


def rpn_map_images(maps: dict, index: int = 0) -> dict:
  """The 2-D maps of Figs. 1 and 3a for one image of an `api.rpn_maps` result.

  Args:
    maps: `api.rpn_maps(model, variables, images)`.
    index: the image within the batch.

  Returns:
    {'P2': {...}, ..., 'P6': {...}}, per level [H_l, W_l] float arrays: rpn_det_features (the
    mean over channels of F_det), rpn_det_objectness (the max over the position's anchors), and
    with RPN_mask rpn_mask_features, rpn_mask_objectness and fused_objectness/<fusion> for
    'rpn', 'roi' and 'roi+rpn'.
  """
  out = {}
  for level, m in maps.items():
    images = {
      "rpn_det_features": np.asarray(m["rpn_det_features"][index]).mean(-1),
      "rpn_det_objectness": np.asarray(m["rpn_det_objectness"][index]).max(-1),
    }
    if "rpn_mask_features" in m:
      images["rpn_mask_features"] = np.asarray(m["rpn_mask_features"][index]).mean(-1)
      images["rpn_mask_objectness"] = np.asarray(m["rpn_mask_objectness"][index]).max(-1)
      for fusion, objectness in m["fused_objectness"].items():
        images[f"fused_objectness/{fusion}"] = np.asarray(objectness[index]).max(-1)
    out[level] = images
  return out


# ------------------------------------------------------------------------------------------------
# Fig. 3b: proposal filtering.


def box_iou(a_nx4: np.ndarray, b_mx4: np.ndarray) -> np.ndarray:
  """Pairwise IoU of xyxy boxes (continuous coordinates), [N, M] float64; 0 for empty unions."""
  a = np.asarray(a_nx4, np.float64).reshape(-1, 4)
  b = np.asarray(b_mx4, np.float64).reshape(-1, 4)
  lt = np.maximum(a[:, None, :2], b[None, :, :2])
  rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
  area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
  area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
  union = area_a[:, None] + area_b[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def proposal_filtering(
  anchors_by_level: list[np.ndarray],
  image_size: tuple[int, int],
  strides: tuple[int, ...],
  proposals: dict,
  gt_boxes: np.ndarray,
  gt_valid: np.ndarray,
  iou_threshold: float = 0.5,
  first_level: int = 2,
) -> dict:
  """Per level, where the objects are before proposal filtering and what survives it (Fig. 3b).

  Definitions (per level l, one image; IoU with the valid ground truths only):
    before: [H_l, W_l] bool, positions where any of the position's anchors has IoU > threshold
      with some ground truth: the anchors that could become good proposals before top-k/NMS.
    tp / fp: [H_l, W_l] bool, the positions whose anchor made a kept proposal (after top-k and
      NMS) that is a true positive (the proposal box has IoU > threshold with some ground truth)
      / a false positive (no ground truth above threshold). A position can be both.
    num_tp, num_fp: the numbers of kept proposals of level l that are TP / FP (proposals, not
      positions).
    num_fn: the number of ground truths g that level l could have found (some level-l anchor
      has IoU > threshold with g) but that no TP proposal of level l covers (no kept level-l
      proposal has IoU > threshold with g).
    num_gt: the number of ground truths some level-l anchor has IoU > threshold with.

  Args:
    anchors_by_level: per level [H_l * W_l * A, 4] anchors in (y, x, anchor) order.
    image_size: (height, width) of the input.
    strides: the stride of each level; H_l = ceil(height / stride).
    proposals: one image's proposals: boxes [P, 4], valid [P], levels [P] (first_level..,
      -1 padding), anchor_indices [P] (into the concatenated anchors).
    gt_boxes: [N, 4] ground-truth boxes.
    gt_valid: [N] bool.
    iou_threshold: the IoU a match must exceed.
    first_level: the FPN level of anchors_by_level[0].

  Returns:
    {level (int): {'before', 'tp', 'fp', 'num_tp', 'num_fp', 'num_fn', 'num_gt'}}.
  """
  gt = np.asarray(gt_boxes, np.float64)[np.asarray(gt_valid, bool)]
  valid = np.asarray(proposals["valid"], bool)
  boxes = np.asarray(proposals["boxes"], np.float64)[valid]
  levels = np.asarray(proposals["levels"])[valid]
  anchor_indices = np.asarray(proposals["anchor_indices"])[valid]
  proposal_iou = box_iou(boxes, gt) > iou_threshold  # [P, G]
  is_tp = proposal_iou.any(axis=1)
  offset = 0
  out = {}
  for j, (anchors, stride) in enumerate(zip(anchors_by_level, strides, strict=True)):
    level = first_level + j
    h, w = math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride)
    num_anchors = anchors.shape[0] // (h * w)
    anchor_hit = box_iou(anchors, gt) > iou_threshold  # [N_l, G]
    before = anchor_hit.reshape(h, w, num_anchors, -1).any(axis=(2, 3))
    here = levels == level
    position = (anchor_indices[here] - offset) // num_anchors  # y * w + x
    tp_map = np.zeros(h * w, bool)
    fp_map = np.zeros(h * w, bool)
    tp_map[position[is_tp[here]]] = True
    fp_map[position[~is_tp[here]]] = True
    reachable = anchor_hit.any(axis=0)  # [G]
    found = (proposal_iou[here] & is_tp[here, None]).any(axis=0)
    out[level] = {
      "before": before,
      "tp": tp_map.reshape(h, w),
      "fp": fp_map.reshape(h, w),
      "num_tp": int(is_tp[here].sum()),
      "num_fp": int((~is_tp[here]).sum()),
      "num_fn": int((reachable & ~found).sum()),
      "num_gt": int(reachable.sum()),
    }
    offset += anchors.shape[0]
  return out


# ------------------------------------------------------------------------------------------------
# Figs. 4 and 6: training curves from the event files.

LOSS_TAGS = (
  "train/rpn_det/objectness",
  "train/rpn_det/box",
  "train/rpn_mask/objectness",
  "train/rpn_mask/box",
)


def read_scalars(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Every scalar of a run's TensorBoard event files.

  CLU's writer stores scalars as tensor summaries (plugin 'scalars', a 0-d tensor in
  `value.tensor`), older writers as `simple_value`; both are read. A resumed run writes a new
  event file; when two files hold the same step the later file's value is kept.

  Args:
    workdir: the folder holding events.out.tfevents.* files (the run's workdir).

  Returns:
    tag -> (steps int64 [T] ascending, values float64 [T]).

  Raises:
    FileNotFoundError: when `workdir` holds no event file.
  """
  paths = sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")))
  if not paths:
    raise FileNotFoundError(
      f"no TensorBoard event files (events.out.tfevents.*) in {workdir}; pass the --workdir of "
      "a training run."
    )
  series: dict[str, dict[int, float]] = {}
  for path in paths:
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name not in ("scalars", ""):
          continue  # images, hparams, text
        if value.HasField("tensor"):
          number = float(np.asarray(tf.make_ndarray(value.tensor)).reshape(()))
        elif value.HasField("simple_value"):
          number = float(value.simple_value)
        else:
          continue
        series.setdefault(value.tag, {})[int(event.step)] = number
  out = {}
  for tag, by_step in series.items():
    steps = np.asarray(sorted(by_step), np.int64)
    out[tag] = (steps, np.asarray([by_step[s] for s in steps], np.float64))
  return out


def loss_series(workdir: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The objectness and box losses of RPN_det and RPN_mask against the step (Fig. 4).

  Args:
    workdir: a SegRPN run's folder.

  Returns:
    {tag: (steps, values)} for the four LOSS_TAGS.

  Raises:
    ValueError: when the run logged no RPN_mask losses (a baseline run).
  """
  scalars = read_scalars(workdir)
  missing = [tag for tag in LOSS_TAGS if tag not in scalars]
  if missing:
    raise ValueError(
      f"{workdir} logged no {', '.join(missing)}: the loss-curves figure compares RPN_det with "
      "RPN_mask and needs a SegRPN run (a baseline run has no RPN_mask)."
    )
  return {tag: scalars[tag] for tag in LOSS_TAGS}


def fg_roi_series(workdir: str) -> tuple[np.ndarray, np.ndarray]:
  """Foreground ROIs per 2000 proposals after NMS against the step (Fig. 6).

  Reads train/fg_rois_per_2000; a run logged before that key existed has train/fg_roi_fraction,
  which is scaled by 2000 (the same number).

  Args:
    workdir: a run's folder.

  Returns:
    (steps, foreground ROIs per 2000 proposals).

  Raises:
    ValueError: when the run logged neither key.
  """
  scalars = read_scalars(workdir)
  if "train/fg_rois_per_2000" in scalars:
    return scalars["train/fg_rois_per_2000"]
  if "train/fg_roi_fraction" in scalars:
    steps, fraction = scalars["train/fg_roi_fraction"]
    return steps, fraction * 2000.0
  raise ValueError(
    f"{workdir} logged neither train/fg_rois_per_2000 nor train/fg_roi_fraction; pass the "
    "--workdir of a training run that has logged at least once."
  )


# ------------------------------------------------------------------------------------------------
# Fig. 7: scale division.


def scale_division(
  instance_map: np.ndarray,
  boxes: np.ndarray,
  valid: np.ndarray,
  crowd: np.ndarray,
  case: str,
  size_scale: float,
  strides: tuple[int, ...] = (4, 8, 16, 32, 64),
) -> dict:
  """One image's class-agnostic ground truth and its division into levels 2..6 by a scale case.

  Args:
    instance_map: [H, W] int, 1 + index into boxes, 0 = none (batch contract).
    boxes: [N, 4] instance boxes.
    valid: [N] bool.
    crowd: [H, W] bool crowd pixels.
    case: 'none', 'case1', 'case2' or 'case3'.
    size_scale: the run's config.model.size_scale.
    strides: the strides of levels 2..6.

  Returns:
    dict with ground_truth [H, W] bool (pixels of any valid instance), membership [N, 5] bool
    (`ops.scale.level_membership`), pixels [5, H, W] bool (level 2 + j: the pixels of the
    instances assigned to it), targets and weights (lists of [H_l, W_l] float, the level targets
    of `ops.scale.class_agnostic_targets` that RPN_mask's branch is trained on) and counts [5]
    (instances per level).
  """
  instance_map = np.asarray(instance_map)
  valid = np.asarray(valid, bool)
  membership = np.asarray(scale_ops.level_membership(boxes, case, size_scale, valid=valid))
  targets, weights = scale_ops.class_agnostic_targets(
    instance_map, np.asarray(boxes), membership, valid, np.asarray(crowd, bool), strides
  )
  ids = np.arange(1, len(valid) + 1)
  pixels = np.stack(
    [np.isin(instance_map, ids[membership[:, j]]) for j in range(scale_ops.NUM_LEVELS)]
  )
  return {
    "ground_truth": np.isin(instance_map, ids[valid]),
    "membership": membership,
    "pixels": pixels,
    "targets": [np.asarray(t) for t in targets],
    "weights": [np.asarray(w) for w in weights],
    "counts": membership.sum(axis=0),
  }


# ------------------------------------------------------------------------------------------------
# Fig. 5: objects the detector misses but the class-agnostic map finds.


def foreground_map(outputs: dict) -> tuple[str, np.ndarray]:
  """The binary-map probability Fig. 5 uses: the class-agnostic map, or for the baseline the
  semantic head's thing probability.

  Args:
    outputs: `api.predict` outputs.

  Returns:
    (output key, [B, H, W] probabilities).
  """
  for key in api.FOREGROUND_KEYS:
    if key in outputs:
      return key, np.asarray(outputs[key])
  raise ValueError(
    "the run has neither a class-agnostic module nor a semantic head, so there is no "
    "foreground map; the missed-objects figure needs config.model.semantic_head or "
    "config.model.class_agnostic."
  )


def box_coverage(boxes_nx4: np.ndarray, mask_hxw: np.ndarray) -> np.ndarray:
  """The fraction of each box's pixels that `mask` marks.

  A box's pixels are those whose centre (x + 0.5, y + 0.5) lies inside it, clipped to the
  image; a box with no pixel has coverage 0.

  Args:
    boxes_nx4: [N, 4] xyxy boxes in input pixels.
    mask_hxw: [H, W] bool.

  Returns:
    [N] float64 in [0, 1].
  """
  mask = np.asarray(mask_hxw, bool)
  height, width = mask.shape
  out = np.zeros(len(boxes_nx4))
  for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes_nx4, np.float64)):
    # Pixel x is inside when x1 <= x + 0.5 < x2, i.e. ceil(x1 - 0.5) <= x < ceil(x2 - 0.5).
    c1, c2 = (int(np.clip(math.ceil(v - 0.5), 0, width)) for v in (x1, x2))
    r1, r2 = (int(np.clip(math.ceil(v - 0.5), 0, height)) for v in (y1, y2))
    if c2 > c1 and r2 > r1:
      out[i] = mask[r1:r2, c1:c2].mean()
  return out


def missed_objects(
  gt_boxes: np.ndarray,
  gt_valid: np.ndarray,
  det_boxes: np.ndarray,
  det_scores: np.ndarray,
  det_valid: np.ndarray,
  foreground_prob: np.ndarray,
  score_threshold: float = 0.5,
  iou_threshold: float = 0.5,
  prob_threshold: float = 0.5,
  min_coverage: float = 0.5,
) -> dict:
  """Ground truths without a detection that the foreground map covers (Fig. 5), one image.

  A ground truth is detected when a valid detection with score >= score_threshold, of any
  class, has IoU >= iou_threshold with it. A missed one is recovered when at least
  min_coverage of its box's pixels have foreground_prob > prob_threshold.

  Args:
    gt_boxes: [N, 4]; gt_valid: [N] bool.
    det_boxes: [D, 4]; det_scores: [D]; det_valid: [D] bool.
    foreground_prob: [H, W] the class-agnostic (or semantic thing) probability.
    score_threshold: detections below it are not drawn and do not count.
    iou_threshold: the IoU of a detection that finds a ground truth.
    prob_threshold: the foreground decision of the map.
    min_coverage: the fraction of a box the map must cover.

  Returns:
    dict with detected, missed, recovered [N] bool (False on padding), coverage [N] float,
    shown [D] bool (the detections that count) and num_missed, num_recovered.
  """
  gt_valid = np.asarray(gt_valid, bool)
  shown = np.asarray(det_valid, bool) & (np.asarray(det_scores) >= score_threshold)
  iou = box_iou(gt_boxes, np.asarray(det_boxes)[shown])
  detected = gt_valid & (iou >= iou_threshold).any(axis=1)
  missed = gt_valid & ~detected
  coverage = box_coverage(gt_boxes, np.asarray(foreground_prob) > prob_threshold)
  recovered = missed & (coverage >= min_coverage)
  return {
    "detected": detected,
    "missed": missed,
    "recovered": recovered,
    "coverage": coverage,
    "shown": shown,
    "num_missed": int(missed.sum()),
    "num_recovered": int(recovered.sum()),
  }
