"""The numbers behind the paper's figures, computed on the host in NumPy
(segrpn_jax.paper.figures draws them).

- `rpn_map_images`: per level, the RPN feature map (channel mean) and the three ROI probability
  maps, one per aspect ratio, under a fusion (Figs. 1 and 3a).
- `filtering_outputs`, `proposal_filtering`: per level, the positions whose proposals (every
  anchor's decoded box, before top-k and NMS) overlap a ground truth, and where the true / false
  positive proposals of the run's training proposal count come from after filtering (Fig. 3b).
- `read_scalars`, `loss_series`, `fg_roi_series`, `run_label`: training curves from a run's
  TensorBoard event files and the setting that names the run (Figs. 4 and 6).
- `scale_division`: one image's class-agnostic ground truth divided into levels 2..6 by a scale
  case (Fig. 7).
- `missed_objects`: large ground truths the detector misses but the class-agnostic or the
  semantic foreground covers (Fig. 5).
- `load_run`, `eval_example`: a run and one evaluation image, with one readable error for a
  workdir, an image index or a run that does not fit the figure.
"""

import functools
import glob
import math
import os

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from segrpn_jax import api, checkpointing, errors, input_pipeline, pretrained
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
    errors.InputFileError: when `workdir` holds no run.
  """
  if not os.path.exists(os.path.join(workdir, checkpointing.CONFIG_FILE)):
    raise errors.InputFileError(
      f"{workdir} is not a training run (no {checkpointing.CONFIG_FILE}); pass the --workdir "
      "of a `python -m segrpn_jax.main` run."
    )
  return checkpointing.load_config(workdir)


def require_rpn_mask(config: ml_collections.ConfigDict, workdir: str, figure: str) -> None:
  """Raises a readable error when a figure needs RPN_mask but the run has none."""
  if segrpn_lib.has_rpn_mask(config.model):
    return
  what = (
    "a baseline run (config.model.class_agnostic False)"
    if not config.model.class_agnostic
    else "a SegRPN run without RPN_mask (config.model.rpn_mask False)"
  )
  raise errors.ConfigError(
    f"{workdir} is {what}, which has no RPN_mask; the {figure} figure needs a SegRPN run "
    "with RPN_mask (configs/segrpn.py or configs/case*.py)."
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
    errors.InputFileError, errors.CheckpointError: no run or no checkpoint in `workdir`.
    errors.ConfigError: a run without RPN_mask for a figure that needs it.
  """
  config = load_config(workdir)
  if needs_rpn_mask:
    require_rpn_mask(config, workdir, figure)
  if not glob.glob(os.path.join(checkpointing.checkpoint_dir(workdir), "*")):
    raise errors.CheckpointError(
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
    errors.DataError: when `index` is past the end of the split.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  if split is not None:
    config.data.eval_split = split
  # The run's own eval batch size (it is already a valid multiple of the devices); one example
  # of the right batch is returned.
  data = input_pipeline.create_eval_dataset(config, process_index=0, process_count=1)
  if not 0 <= index < data.num_examples:
    raise errors.DataError(
      f"image {index} is not in the {config.data.eval_split} split, which has "
      f"{data.num_examples} images; pass --image=0..{data.num_examples - 1}."
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


def rpn_map_images(maps: dict, fusion: str = "none", index: int = 0) -> dict:
  """The 2-D maps of Figs. 1 and 3a for one image of an `api.rpn_maps` result, under a fusion.

  The paper's Fig. 3a shows per level "a single RPN feature map and three ROI probability maps
  corresponding to each of the three aspect ratios". Here the feature map is the one RPN_det's
  1x1 convs read under `fusion` (F_det, or F_det + F_det * F_mask under 'rpn' and 'roi+rpn'),
  averaged over its channels, and the probability maps are those that rank the anchors under
  `fusion`, one per aspect ratio.

  Args:
    maps: `api.rpn_maps(model, variables, images)`.
    fusion: 'none', 'rpn', 'roi' or 'roi+rpn'; anything but 'none' needs RPN_mask.
    index: the image within the batch.

  Returns:
    {'P2': {...}, ..., 'P6': {...}}, per level features [H_l, W_l] and objectness [A, H_l, W_l]
    (probabilities, in the order of config.model.anchor.aspect_ratios), float32.

  Raises:
    errors.ConfigError: a fusion other than 'none' on a run without RPN_mask.
  """
  out = {}
  for level, m in maps.items():
    if fusion != "none" and "fused_objectness" not in m:
      raise errors.ConfigError(
        f"fusion {fusion!r} needs RPN_mask, which the run has not; pass --fusion=none."
      )
    features = m["fused_features"] if fusion in ("rpn", "roi+rpn") else m["rpn_det_features"]
    objectness = m["rpn_det_objectness"] if fusion == "none" else m["fused_objectness"][fusion]
    out[level] = {
      "features": np.asarray(features[index], np.float32).mean(-1),
      "objectness": np.moveaxis(np.asarray(objectness[index], np.float32), -1, 0),
    }
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


@functools.partial(jax.jit, static_argnames=("model", "fusion"))
def filtering_outputs(model: segrpn_lib.SegRPN, variables: dict, images, fusion: str) -> dict:
  """`SegRPN.proposal_filtering`: every anchor's decoded box, the fused anchor scores and the
  training proposals of a batch under `fusion` (jitted; model and fusion static)."""
  return model.apply(variables, images, fusion, method=segrpn_lib.SegRPN.proposal_filtering)


def split_levels(per_anchor: np.ndarray, anchors_by_level: list[np.ndarray]) -> list[np.ndarray]:
  """Splits a per-anchor array of one image ([N, ...], concatenated-anchor order) by level."""
  sizes = [len(a) for a in anchors_by_level]
  if sum(sizes) != len(per_anchor):
    raise ValueError(f"{len(per_anchor)} per-anchor values but {sum(sizes)} anchors.")
  return np.split(np.asarray(per_anchor), np.cumsum(sizes)[:-1])


def iou_above(a_nx4: np.ndarray, b_mx4: np.ndarray, threshold: float, chunk: int = 8192):
  """[N, M] bool: box_iou(a, b) > threshold, computed in row chunks (N may be every anchor)."""
  a = np.asarray(a_nx4).reshape(-1, 4)
  out = np.zeros((len(a), len(np.asarray(b_mx4).reshape(-1, 4))), bool)
  for i in range(0, len(a), chunk):
    out[i : i + chunk] = box_iou(a[i : i + chunk], b_mx4) > threshold
  return out


def proposal_filtering(
  decoded_by_level: list[np.ndarray],
  image_size: tuple[int, int],
  strides: tuple[int, ...],
  proposals: dict,
  gt_boxes: np.ndarray,
  gt_valid: np.ndarray,
  iou_threshold: float = 0.5,
  first_level: int = 2,
) -> dict:
  """Per level, where the objects are before proposal filtering and what survives it (Fig. 3b).

  The paper: "yellow points denote pixels with proposals having an overlap of greater than 0.5
  with the ground truth bounding box before filtering. Red and green points are pixels denoting
  false positives (FPs) and true positives (TPs) respectively, after filtering."

  Definitions (per level l, one image; IoU with the valid ground truths only):
    before (yellow): [H_l, W_l] bool, positions where the decoded box (proposal before top-k and
      NMS) of any of the position's anchors has IoU > threshold with some ground truth.
    tp / fp: [H_l, W_l] bool, the positions whose anchor made a kept proposal (after top-k and
      NMS) that is a true positive (IoU > threshold with some ground truth) / a false positive
      (no ground truth above threshold). A position can be both.
    num_positive: the number of level-l proposals before filtering (decoded boxes, one per
      anchor) with IoU > threshold with some ground truth: the proposals behind `before`.
    num_tp, num_fp: the numbers of kept proposals of level l that are TP / FP.
    num_fn: the positive proposals before filtering that filtering dropped (num_positive less
      the kept ones among them). The paper counts "the exact number of proposals belonging to
      TPs, FPs and FNs"; all three count proposals, not positions or objects.
    num_gt: the number of ground truths some proposal of level l overlaps before filtering.
    num_gt_lost: those of them no kept level-l proposal overlaps.
    num_before: the number of positions in `before`.

  Args:
    decoded_by_level: per level [H_l * W_l * A, 4] decoded (and clipped) boxes of every anchor,
      in (y, x, anchor) order (`split_levels` of filtering_outputs' decoded_boxes).
    image_size: (height, width) of the input.
    strides: the stride of each level; H_l = ceil(height / stride).
    proposals: one image's kept proposals: boxes [P, 4], valid [P], levels [P] (first_level..,
      -1 padding), anchor_indices [P] (into the concatenated anchors).
    gt_boxes: [N, 4] ground-truth boxes.
    gt_valid: [N] bool.
    iou_threshold: the IoU a match must exceed.
    first_level: the FPN level of decoded_by_level[0].

  Returns:
    {level (int): {'before', 'tp', 'fp', 'num_positive', 'num_tp', 'num_fp', 'num_fn', 'num_gt',
    'num_gt_lost', 'num_before'}}.
  """
  gt = np.asarray(gt_boxes, np.float64)[np.asarray(gt_valid, bool)]
  valid = np.asarray(proposals["valid"], bool)
  boxes = np.asarray(proposals["boxes"], np.float64)[valid]
  levels = np.asarray(proposals["levels"])[valid]
  anchor_indices = np.asarray(proposals["anchor_indices"])[valid]
  proposal_iou = iou_above(boxes, gt, iou_threshold)  # [P, G]
  is_tp = proposal_iou.any(axis=1)
  offset = 0
  out = {}
  for j, (decoded, stride) in enumerate(zip(decoded_by_level, strides, strict=True)):
    level = first_level + j
    h, w = math.ceil(image_size[0] / stride), math.ceil(image_size[1] / stride)
    num_anchors = decoded.shape[0] // (h * w)
    hit = iou_above(decoded, gt, iou_threshold)  # [N_l, G]
    positive = hit.any(axis=1)  # [N_l]
    before = positive.reshape(h, w, num_anchors).any(axis=2)
    here = levels == level
    kept = np.zeros(len(decoded), bool)
    kept[anchor_indices[here] - offset] = True
    position = (anchor_indices[here] - offset) // num_anchors  # y * w + x
    tp_map = np.zeros(h * w, bool)
    fp_map = np.zeros(h * w, bool)
    tp_map[position[is_tp[here]]] = True
    fp_map[position[~is_tp[here]]] = True
    reachable = hit.any(axis=0)  # [G]
    found = proposal_iou[here].any(axis=0)
    out[level] = {
      "before": before,
      "tp": tp_map.reshape(h, w),
      "fp": fp_map.reshape(h, w),
      "num_positive": int(positive.sum()),
      "num_tp": int(is_tp[here].sum()),
      "num_fp": int((~is_tp[here]).sum()),
      "num_fn": int((positive & ~kept).sum()),
      "num_gt": int(reachable.sum()),
      "num_gt_lost": int((reachable & ~found).sum()),
      "num_before": int(before.sum()),
    }
    offset += decoded.shape[0]
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
    errors.InputFileError: when `workdir` holds no event file.
  """
  paths = sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")))
  if not paths:
    raise errors.InputFileError(
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
    errors.DataError: when the run logged no RPN_mask losses (a baseline run).
  """
  scalars = read_scalars(workdir)
  missing = [tag for tag in LOSS_TAGS if tag not in scalars]
  if missing:
    raise errors.DataError(
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
    errors.DataError: when the run logged neither key.
  """
  scalars = read_scalars(workdir)
  if "train/fg_rois_per_2000" in scalars:
    return scalars["train/fg_rois_per_2000"]
  if "train/fg_roi_fraction" in scalars:
    steps, fraction = scalars["train/fg_roi_fraction"]
    return steps, fraction * 2000.0
  raise errors.DataError(
    f"{workdir} logged neither train/fg_rois_per_2000 nor train/fg_roi_fraction; pass the "
    "--workdir of a training run that has logged at least once."
  )


def run_label(config: ml_collections.ConfigDict) -> str:
  """A run's name in a legend (Fig. 6): its paper setting and training fusion, from its config.

  Args:
    config: the run's config.

  Returns:
    e.g. 'baseline', 'SegRPN (no scale division), fusion roi+rpn', 'SegRPN case2, fusion roi',
    'SegRPN without RPN_mask (no scale division)'.
  """
  m = config.model
  if not m.class_agnostic:
    return "baseline" if m.semantic_head else "Faster R-CNN (no semantic head)"
  scale = "(no scale division)" if m.scale_case == "none" else m.scale_case
  if not segrpn_lib.has_rpn_mask(m):
    return f"SegRPN without RPN_mask {scale}"
  return f"SegRPN {scale}, fusion {m.fusion.train}"


def run_labels(configs: list[ml_collections.ConfigDict]) -> list[str]:
  """`run_label` of each run; runs of the same setting are told apart as 'run 1', 'run 2'."""
  labels = [run_label(c) for c in configs]
  counts = {label: labels.count(label) for label in labels}
  seen: dict[str, int] = {}
  out = []
  for label in labels:
    if counts[label] > 1:
      seen[label] = seen.get(label, 0) + 1
      label = f"{label} (run {seen[label]})"
    out.append(label)
  return out


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


FOREGROUND_MAPS = {"class-agnostic": "class_agnostic_prob", "semantic": "semantic_foreground_prob"}


def foreground_maps(outputs: dict, index: int = 0) -> dict[str, np.ndarray]:
  """The foreground probabilities Fig. 5 compares with the detections, for one image.

  Args:
    outputs: `api.predict` outputs.
    index: the image within the batch.

  Returns:
    {'class-agnostic': [H, W] (the class-agnostic map, with the class-agnostic module),
     'semantic': [H, W] (the semantic head's total thing probability, with a semantic head)}.

  Raises:
    errors.ConfigError: a run with neither map.
  """
  out = {
    name: np.asarray(outputs[key][index]) for name, key in FOREGROUND_MAPS.items() if key in outputs
  }
  if not out:
    raise errors.ConfigError(
      "the run has neither a class-agnostic module nor a semantic head, so there is no "
      "foreground map; the missed-objects figure needs config.model.semantic_head or "
      "config.model.class_agnostic."
    )
  return out


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


def box_side(boxes_nx4: np.ndarray) -> np.ndarray:
  """sqrt(box area) in pixels, the side a box's scale is measured by (as the scale cases)."""
  b = np.asarray(boxes_nx4, np.float64).reshape(-1, 4)
  return np.sqrt(np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None))


def missed_objects(
  gt_boxes: np.ndarray,
  gt_valid: np.ndarray,
  det_boxes: np.ndarray,
  det_scores: np.ndarray,
  det_valid: np.ndarray,
  foreground: dict[str, np.ndarray],
  min_side: float = 64.0,
  score_threshold: float = 0.5,
  iou_threshold: float = 0.5,
  prob_threshold: float = 0.5,
  min_coverage: float = 0.5,
) -> dict:
  """Large ground truths the detector misses but a segmentation output covers (Fig. 5), one image.

  The paper: "Green boxes represent large objects which are missed by the object detection
  branch but recovered by the semantic and class-agnostic segmentation branches." Our
  definitions: a ground truth is large when sqrt(box area) >= min_side input pixels; it is
  detected when a valid detection with score >= score_threshold, of any class, has
  IoU >= iou_threshold with it; a large missed one is recovered by a map when at least
  min_coverage of its box's pixels have probability > prob_threshold there, and recovered when
  any map recovers it.

  Args:
    gt_boxes: [N, 4]; gt_valid: [N] bool.
    det_boxes: [D, 4]; det_scores: [D]; det_valid: [D] bool.
    foreground: name -> [H, W] foreground probability (`foreground_maps`).
    min_side: the side from which an object is large, in input pixels.
    score_threshold: detections below it are not drawn and do not count.
    iou_threshold: the IoU of a detection that finds a ground truth.
    prob_threshold: the foreground decision of the maps.
    min_coverage: the fraction of a box a map must cover.

  Returns:
    dict with, per ground truth ([N] bool, False on padding): detected, missed, large,
    large_missed, recovered; coverage {name: [N] float}, recovered_by {name: [N] bool}; shown
    [D] bool (the detections that count); and the counts num_gt, num_shown, num_missed,
    num_large, num_large_missed, num_recovered.
  """
  gt_valid = np.asarray(gt_valid, bool)
  shown = np.asarray(det_valid, bool) & (np.asarray(det_scores) >= score_threshold)
  iou = box_iou(gt_boxes, np.asarray(det_boxes)[shown])
  detected = gt_valid & (iou >= iou_threshold).any(axis=1)
  missed = gt_valid & ~detected
  large = gt_valid & (box_side(gt_boxes) >= min_side)
  large_missed = large & missed
  coverage = {
    k: box_coverage(gt_boxes, np.asarray(p) > prob_threshold) for k, p in foreground.items()
  }
  recovered_by = {k: large_missed & (c >= min_coverage) for k, c in coverage.items()}
  recovered = np.zeros_like(large_missed)
  for by_map in recovered_by.values():
    recovered |= by_map
  return {
    "detected": detected,
    "missed": missed,
    "large": large,
    "large_missed": large_missed,
    "recovered": recovered,
    "coverage": coverage,
    "recovered_by": recovered_by,
    "shown": shown,
    "num_gt": int(gt_valid.sum()),
    "num_shown": int(shown.sum()),
    "num_missed": int(missed.sum()),
    "num_large": int(large.sum()),
    "num_large_missed": int(large_missed.sum()),
    "num_recovered": int(recovered.sum()),
  }
