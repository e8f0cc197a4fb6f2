"""Evaluation metrics that give the official tools' numbers: AP50, AR@1000, mIoU and mIoU*.

`DetectionAP` and `ProposalRecall` are host-side (NumPy) re-implementations of pycocotools'
`COCOeval` for boxes with the 'all' area range; they agree with it to float rounding, including:

- IoU on xywh boxes without +1; against a crowd box it is intersection over detection area.
- maxDets caps detections per image *and category* (COCOeval sorts and truncates each
  (image, category) list), after a stable (mergesort) sort by descending score.
- Ground truth is stably sorted with ignored (crowd) boxes last. A detection takes the free
  non-ignored box of highest IoU >= threshold (the later one on ties, as COCOeval replaces on
  >=); only without one does it look at ignored boxes. Crowd boxes can absorb any number of
  detections; a detection matched to an ignored box counts as neither TP nor FP.
- Precision is made monotone from the right and read at the 101 recall thresholds with
  `searchsorted(side='left')`; categories without non-ignored ground truth are left out.

`ConfusionMatrix` follows the Cityscapes script: IoU = TP / (TP + FP + FN) per class, mean
over classes with a non-zero denominator. mIoU* (the binary foreground/background map) is the
2-class instance: `ConfusionMatrix(2)` fed 0 = background, 1 = foreground; its 'mIoU' is mIoU*.
Undefined values (no ground truth at all) are NaN, where COCOeval would print -1.
"""

import jax.numpy as jnp
import numpy as np

from segrpn_jax.datasets import labels

THING_CLASSES = labels.THING_NAMES  # detection classes 1..8
CITYSCAPES_CLASSES = labels.TRAIN_ID_NAMES  # the 19 trainIds
BINARY_CLASSES = ("background", "foreground")
# pycocotools' own linspace calls, so the thresholds are bit-identical to COCOeval's.
COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
_MAX_AREA = 1e5**2  # upper end of COCO's 'all' area range


def _image_entries(what, boxes, valid, **fields):
  """Checks one image's padded arrays; returns its valid entries (boxes float64 xyxy and xywh)."""
  boxes = np.asarray(boxes, np.float64)
  if boxes.ndim != 2 or boxes.shape[1] != 4:
    raise ValueError(f"{what} boxes must be [N, 4] xyxy, got shape {boxes.shape}")
  n = len(boxes)
  valid = np.ones(n, bool) if valid is None else np.asarray(valid)
  out = {}
  for key, value in {"valid": valid, **fields}.items():
    value = np.asarray(value)
    if value.shape != (n,):
      raise ValueError(f"{what} {key} must have shape ({n},) like its boxes, got {value.shape}")
    out[key] = value
  valid = out.pop("valid").astype(bool)
  out = {key: value[valid] for key, value in out.items()}
  xyxy = boxes[valid]
  bad = ~np.isfinite(xyxy).all(1) | (xyxy[:, 2] < xyxy[:, 0]) | (xyxy[:, 3] < xyxy[:, 1])
  if bad.any():
    raise ValueError(f"{what} box {xyxy[bad][0]} is not a finite xyxy box with x2>=x1, y2>=y1")
  out["xyxy"] = xyxy  # kept for the COCO export, which recomputes the same xywh
  out["xywh"] = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
  return out


def _check_classes(what, classes, num_classes):
  classes = classes.astype(np.int64)
  if ((classes < 1) | (classes > num_classes)).any():
    raise ValueError(f"{what} classes of valid entries must be in 1..{num_classes}: {classes}")
  return classes


def _coco_iou(dt_dx4, gt_gx4, gt_crowd_g):
  """pycocotools' box IoU on xywh boxes; crowd ground truth divides by the detection area."""
  dx, dy, dw, dh = (v[:, None] for v in dt_dx4.T)
  gx, gy, gw, gh = (v[None, :] for v in gt_gx4.T)
  w = np.minimum(dx + dw, gx + gw) - np.maximum(dx, gx)
  h = np.minimum(dy + dh, gy + gh) - np.maximum(dy, gy)
  overlap = (w > 0) & (h > 0)
  inter = np.where(overlap, w * h, 0.0)
  union = np.where(gt_crowd_g[None, :], dw * dh, dw * dh + gw * gh - inter)
  return np.where(overlap, inter / np.where(overlap, union, 1.0), 0.0)


def _best_free(ious, columns, taken, crowd, threshold):
  # COCOeval replaces its best match on >=, so of equally good boxes the later one wins.
  best, pick = threshold, -1
  for g in columns:
    if ious[g] >= best and (crowd[g] or g not in taken):
      best, pick = ious[g], g
  return pick


def _greedy_match(iou_dxg, gt_ignore_g, gt_crowd_g, thresholds_t):
  """COCOeval's greedy matching of score-sorted detections to ground truth.

  Returns:
    (matched_txd, on_ignored_txd): detection d matched some box at threshold t, and that box
    was an ignored one.
  """
  num_dt, num_gt = iou_dxg.shape
  matched = np.zeros((len(thresholds_t), num_dt), bool)
  on_ignored = np.zeros_like(matched)
  if num_dt == 0 or num_gt == 0:
    return matched, on_ignored
  thresholds = np.minimum(thresholds_t, 1 - 1e-10).tolist()  # COCOeval caps at 1 - 1e-10
  candidates = iou_dxg >= min(thresholds)  # boxes below every threshold can never be taken
  ignore, crowd = gt_ignore_g.tolist(), gt_crowd_g.tolist()
  taken = [set() for _ in thresholds]
  for d in np.flatnonzero(candidates.any(1)).tolist():
    ious = iou_dxg[d].tolist()
    columns = np.flatnonzero(candidates[d]).tolist()
    regular = [g for g in columns if not ignore[g]]
    ignored = [g for g in columns if ignore[g]]
    for t, threshold in enumerate(thresholds):
      g = _best_free(ious, regular, taken[t], crowd, threshold)
      if g < 0:
        g = _best_free(ious, ignored, taken[t], crowd, threshold)
      if g >= 0:
        taken[t].add(g)
        matched[t, d], on_ignored[t, d] = True, ignore[g]
  return matched, on_ignored


def _evaluate_image(dt_xywh, dt_scores, gt_xywh, gt_crowd, thresholds, max_dets):
  """COCOeval.evaluateImg for one image and category, area range 'all'.

  Returns:
    (kept_d, tp_txd, ignored_txd, num_gt): indices of the detections kept (highest score first,
    stable, at most max_dets), their true-positive and ignore flags per threshold, and the
    number of non-ignored ground-truth boxes.
  """
  kept = np.argsort(-dt_scores, kind="mergesort")[:max_dets]
  dt_xywh = dt_xywh[kept]
  # COCOeval also sorts the ground truth ignored-last (stably); _greedy_match tries regular
  # boxes before ignored ones in their given order, which is the same thing.
  gt_ignore = gt_crowd | (gt_xywh[:, 2] * gt_xywh[:, 3] > _MAX_AREA)
  iou = _coco_iou(dt_xywh, gt_xywh, gt_crowd)
  matched, on_ignored = _greedy_match(iou, gt_ignore, gt_crowd, thresholds)
  # Unmatched detections outside the area range are ignored too ('all': only huge ones).
  too_big = dt_xywh[:, 2] * dt_xywh[:, 3] > _MAX_AREA
  ignored = on_ignored | (~matched & too_big[None, :])
  return kept, matched & ~on_ignored, ignored, int((~gt_ignore).sum())


def _average_precision(scores_d, tp_d, ignored_d, num_gt):
  """COCOeval.accumulate for one category and threshold: 101-point interpolated AP."""
  if num_gt == 0:
    return float("nan")
  order = np.argsort(-scores_d, kind="mergesort")
  tp, ignored = tp_d[order], ignored_d[order]
  tp_sum = np.cumsum(tp).astype(np.float64)
  fp_sum = np.cumsum(~tp & ~ignored).astype(np.float64)
  recall = tp_sum / num_gt
  precision = tp_sum / (fp_sum + tp_sum + np.spacing(1))
  precision = np.maximum.accumulate(precision[::-1])[::-1]
  index = np.searchsorted(recall, COCO_RECALL_THRESHOLDS, side="left")
  if not tp.size:
    return 0.0
  # Recall thresholds beyond the last recall reached get precision 0.
  reached = index < len(precision)
  q = np.where(reached, precision[np.minimum(index, len(precision) - 1)], 0.0)
  return float(np.mean(q))


def _mean_defined(values):
  values = [v for v in values if not np.isnan(v)]
  return float(np.mean(values)) if values else float("nan")


def with_crowd_regions(boxes_nx4, classes_n, valid_n, crowd_boxes_kx4, crowd_valid_k):
  """Appends the batch's per-class crowd boxes to one image's ground truth as crowd entries.

  Args:
    boxes_nx4, classes_n, valid_n: the image's `boxes`, `classes`, `valid` (batch contract).
    crowd_boxes_kx4, crowd_valid_k: its `crowd_boxes`, `crowd_valid`; row c is class c + 1.

  Returns:
    (boxes, classes, valid, crowd) with N + K entries, as `DetectionAP.add` takes them.
  """
  k = len(crowd_boxes_kx4)
  boxes = np.concatenate([np.asarray(boxes_nx4), np.asarray(crowd_boxes_kx4)], axis=0)
  classes = np.concatenate([np.asarray(classes_n), np.arange(1, k + 1)]).astype(np.int32)
  valid = np.concatenate([np.asarray(valid_n, bool), np.asarray(crowd_valid_k, bool)])
  crowd = np.concatenate([np.zeros(len(classes_n), bool), np.ones(k, bool)])
  return boxes, classes, valid, crowd


def to_coco_json(image_ids, boxes, scores, classes, valid=None):
  """Detections of several images in the COCO results format (what `COCO.loadRes` reads).

  Args:
    image_ids: one integer id per image (the ids of the matching ground-truth export).
    boxes: per image, [N, 4] xyxy boxes.
    scores: per image, [N] scores.
    classes: per image, [N] category ids.
    valid: per image, [N] bool, or None for all valid.

  Returns:
    A list of {'image_id', 'category_id', 'bbox': [x, y, w, h], 'score'} dicts, image by image
    in the order given (COCOeval breaks score ties by this order).
  """
  valid = [None] * len(image_ids) if valid is None else valid
  results = []
  for image_id, b, s, c, v in zip(image_ids, boxes, scores, classes, valid, strict=True):
    e = _image_entries("detection", b, v, scores=s, classes=c)
    rows = zip(e["xywh"].tolist(), e["scores"].tolist(), e["classes"].tolist(), strict=True)
    for xywh, score, cls in rows:
      results.append(
        {"image_id": int(image_id), "category_id": int(cls), "bbox": xywh, "score": float(score)}
      )
  return results


def to_coco_ground_truth(image_ids, boxes, classes, crowd, valid=None, class_names=THING_CLASSES):
  """Ground truth of several images as a COCO dataset dict (`COCO().dataset`).

  Args:
    image_ids: one integer id per image.
    boxes: per image, [N, 4] xyxy boxes.
    classes: per image, [N] category ids in 1..len(class_names).
    crowd: per image, [N] bool crowd flags (COCO's iscrowd: ignore regions).
    valid: per image, [N] bool, or None for all valid.
    class_names: category names; category id i + 1 is class_names[i].

  Returns:
    {'images', 'annotations', 'categories'}; annotation ids start at 1 (COCOeval treats id 0
    as "unmatched") and 'area' is the box area.
  """
  valid = [None] * len(image_ids) if valid is None else valid
  annotations = []
  for image_id, b, c, k, v in zip(image_ids, boxes, classes, crowd, valid, strict=True):
    e = _image_entries("ground-truth", b, v, classes=c, crowd=k)
    _check_classes("ground-truth", e["classes"], len(class_names))
    rows = zip(e["xywh"].tolist(), e["classes"].tolist(), e["crowd"].tolist(), strict=True)
    for xywh, cls, iscrowd in rows:
      annotations.append({
        "id": len(annotations) + 1, "image_id": int(image_id), "category_id": int(cls),
        "bbox": xywh, "area": xywh[2] * xywh[3], "iscrowd": int(bool(iscrowd)),
      })  # fmt: skip
  return {
    "images": [{"id": int(i)} for i in image_ids],
    "annotations": annotations,
    "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)],
  }


class DetectionAP:
  """Per-class box AP at one IoU threshold, equal to pycocotools' COCOeval (bbox, area 'all').

  Args:
    num_classes: K thing classes, ids 1..K.
    iou_threshold: the matching IoU (COCOeval iouThrs=[iou_threshold]).
    max_detections: COCO's maxDets; like COCOeval it caps each image's detections *per class*.
    class_names: K names for the result keys (THING_CLASSES when K = 8).
  """

  def __init__(self, num_classes=8, iou_threshold=0.5, max_detections=100, class_names=None):
    if class_names is None:
      class_names = (
        THING_CLASSES if num_classes == 8 else tuple(map(str, range(1, num_classes + 1)))
      )
    if len(class_names) != num_classes:
      raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
    self.num_classes, self.class_names = num_classes, tuple(class_names)
    self.iou_threshold, self.max_detections = float(iou_threshold), int(max_detections)
    self._per_class = [[] for _ in range(num_classes)]  # (scores_d, tp_d, ignored_d) per image
    self._num_gt = np.zeros(num_classes, np.int64)
    self._images = []  # valid entries per image, for the COCO export

  def add(
    self,
    pred_boxes,
    pred_scores,
    pred_classes,
    pred_valid,
    gt_boxes,
    gt_classes,
    gt_valid,
    gt_crowd,
  ):
    """Adds one image (padded arrays; entries with valid False are skipped).

    Args:
      pred_boxes: [D, 4] xyxy detections.
      pred_scores: [D] scores.
      pred_classes: [D] classes in 1..K.
      pred_valid: [D] bool.
      gt_boxes: [G, 4] xyxy ground truth, crowd regions included (see `with_crowd_regions`).
      gt_classes: [G] classes in 1..K.
      gt_valid: [G] bool.
      gt_crowd: [G] bool: crowd regions, which only make overlapping detections ignored.
    """
    dt = _image_entries("pred", pred_boxes, pred_valid, scores=pred_scores, classes=pred_classes)
    gt = _image_entries("gt", gt_boxes, gt_valid, classes=gt_classes, crowd=gt_crowd)
    dt_classes = _check_classes("pred", dt["classes"], self.num_classes)
    gt_classes = _check_classes("gt", gt["classes"], self.num_classes)
    scores, crowd = dt["scores"].astype(np.float64), gt["crowd"].astype(bool)
    if not np.isfinite(scores).all():
      raise ValueError(f"pred_scores must be finite, got {scores}")
    for c in range(1, self.num_classes + 1):
      d, g = dt_classes == c, gt_classes == c
      if d.any() or g.any():
        kept, tp, ignored, num_gt = _evaluate_image(
          dt["xywh"][d], scores[d], gt["xywh"][g], crowd[g], [self.iou_threshold],
          self.max_detections,
        )  # fmt: skip
        self._per_class[c - 1].append((scores[d][kept], tp[0], ignored[0]))
        self._num_gt[c - 1] += num_gt
    self._images.append((dt, gt))

  def result(self):
    """Returns {'mAP50': mean over classes with ground truth, 'AP50/<class>': ...} in [0, 1]."""
    tag = f"{round(100 * self.iou_threshold)}"
    per_class = {}
    for name, entries, num_gt in zip(self.class_names, self._per_class, self._num_gt, strict=True):
      scores, tp, ignored = (
        (np.concatenate(p) for p in zip(*entries, strict=True))
        if entries
        else (np.zeros(0), np.zeros(0, bool), np.zeros(0, bool))
      )
      per_class[f"AP{tag}/{name}"] = _average_precision(scores, tp, ignored, num_gt)
    return {f"mAP{tag}": _mean_defined(per_class.values()), **per_class}

  def coco_ground_truth(self):
    """The ground truth added so far as a COCO dataset dict; images have ids 1, 2, ..."""
    gts = [g for _, g in self._images]
    return to_coco_ground_truth(
      range(1, len(gts) + 1), [g["xyxy"] for g in gts], [g["classes"] for g in gts],
      [g["crowd"] for g in gts], class_names=self.class_names,
    )  # fmt: skip

  def coco_detections(self):
    """The detections added so far in the COCO results format, for `coco_ground_truth()`."""
    dts = [d for d, _ in self._images]
    return to_coco_json(
      range(1, len(dts) + 1), [d["xyxy"] for d in dts], [d["scores"] for d in dts],
      [d["classes"] for d in dts],
    )  # fmt: skip


class ProposalRecall:
  """Class-agnostic COCO average recall over IoU 0.50:0.05:0.95 at `max_proposals` per image.

  Equal to COCOeval (bbox) with useCats=0, maxDets=[max_proposals], area 'all', averaging
  eval['recall'] over the IoU thresholds; crowd boxes are ignore regions, as there.

  Args:
    max_proposals: proposals per image that count (COCO's maxDets).
  """

  def __init__(self, max_proposals=1000):
    self.max_proposals = int(max_proposals)
    self._matched_t = np.zeros(len(COCO_IOU_THRESHOLDS), np.int64)  # TPs per IoU threshold
    self._num_gt = 0
    self._images = []  # kept proposals and ground truth per image, for the COCO export

  def add(self, boxes, valid, gt_boxes, gt_valid, gt_crowd, scores=None):
    """Adds one image.

    Args:
      boxes: [P, 4] xyxy proposals; valid: [P] bool.
      gt_boxes: [G, 4] xyxy ground truth (any class); gt_valid, gt_crowd: [G] bool.
      scores: optional [P] objectness; the top `max_proposals` by score count (stable sort,
        as COCOeval). Without scores the proposals count in the order given.
    """
    n = len(np.asarray(boxes))
    given = np.arange(n, 0, -1, dtype=np.float64) if scores is None else scores
    dt = _image_entries("proposal", boxes, valid, scores=given)
    gt = _image_entries("gt", gt_boxes, gt_valid, crowd=gt_crowd)
    scores = dt["scores"].astype(np.float64)
    if not np.isfinite(scores).all():
      raise ValueError(f"proposal scores must be finite, got {scores}")
    crowd = gt["crowd"].astype(bool)
    kept, tp, _, num_gt = _evaluate_image(
      dt["xywh"], scores, gt["xywh"], crowd, COCO_IOU_THRESHOLDS, self.max_proposals
    )
    self._matched_t += tp.sum(1)
    self._num_gt += num_gt
    self._images.append((dt["xyxy"][kept], scores[kept], gt["xyxy"], crowd))

  def result(self):
    """Returns {'AR@<max_proposals>': recall averaged over the IoU thresholds}, in [0, 1]."""
    recall = self._matched_t / self._num_gt if self._num_gt else np.full(1, np.nan)
    return {f"AR@{self.max_proposals}": float(np.mean(recall))}

  def coco_ground_truth(self):
    """The ground truth added so far as a COCO dataset dict with one category, 'object'."""
    return to_coco_ground_truth(
      range(1, len(self._images) + 1), [g for _, _, g, _ in self._images],
      [np.ones(len(g), np.int64) for _, _, g, _ in self._images],
      [k for *_, k in self._images], class_names=("object",),
    )  # fmt: skip

  def coco_detections(self):
    """The counted proposals in the COCO results format (category 1), for `coco_ground_truth`."""
    return to_coco_json(
      range(1, len(self._images) + 1), [b for b, *_ in self._images],
      [s for _, s, *_ in self._images], [np.ones(len(b), np.int64) for b, *_ in self._images],
    )  # fmt: skip


def confusion_matrix_update(pred, gt, num_classes, ignore_label=255, mask=None):
  """A [K, K] int32 confusion matrix of one batch (rows ground truth, columns prediction).

  Jittable and vmappable. Pixels whose label is `ignore_label` or outside [0, K), whose
  prediction is outside [0, K), or where `mask` is False are not counted.

  Args:
    pred: int predicted labels, any shape.
    gt: int ground-truth labels, same shape.
    num_classes: K (static).
    ignore_label: label of unlabelled pixels.
    mask: optional bool, aligned with the leading axes of gt (e.g. `example_mask` [B]).

  Returns:
    int32 [K, K] counts.
  """
  pred, gt = jnp.asarray(pred).astype(jnp.int32), jnp.asarray(gt).astype(jnp.int32)
  counted = (gt != ignore_label) & (gt >= 0) & (gt < num_classes)
  counted &= (pred >= 0) & (pred < num_classes)
  if mask is not None:
    mask = jnp.asarray(mask, bool)
    counted &= mask.reshape(mask.shape + (1,) * (gt.ndim - mask.ndim))
  # Uncounted pixels go to one extra bin that is dropped, so shapes stay static.
  index = jnp.where(counted, gt * num_classes + pred, num_classes * num_classes)
  counts = jnp.bincount(index.ravel(), length=num_classes * num_classes + 1)
  return counts[:-1].reshape(num_classes, num_classes).astype(jnp.int32)


class ConfusionMatrix:
  """Host-side confusion matrix (rows ground truth) with the Cityscapes script's IoU and mIoU.

  mIoU* is `ConfusionMatrix(2)` fed binary maps (0 background, 1 foreground, ignore_label
  elsewhere): its 'mIoU' averages the background and foreground IoU.

  Args:
    num_classes: K labels 0..K-1.
    ignore_label: label of unlabelled pixels.
    class_names: K names (CITYSCAPES_CLASSES for K = 19, BINARY_CLASSES for K = 2).
  """

  def __init__(self, num_classes, ignore_label=255, class_names=None):
    if class_names is None:
      defaults = {19: CITYSCAPES_CLASSES, 2: BINARY_CLASSES}
      class_names = defaults.get(num_classes, tuple(map(str, range(num_classes))))
    if len(class_names) != num_classes:
      raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
    self.num_classes, self.ignore_label = num_classes, ignore_label
    self.class_names = tuple(class_names)
    self.matrix = np.zeros((num_classes, num_classes), np.int64)

  def add(self, pred, gt, mask=None):
    """Counts label maps on the host.

    Args:
      pred: int predicted labels in [0, K), any shape.
      gt: int ground-truth labels in [0, K) or ignore_label, same shape.
      mask: optional bool aligned with the leading axes (e.g. `example_mask` [B]).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
      raise ValueError(f"pred shape {pred.shape} differs from gt shape {gt.shape}")
    counted = gt != self.ignore_label
    if mask is not None:
      mask = np.asarray(mask, bool)
      counted &= mask.reshape(mask.shape + (1,) * (gt.ndim - mask.ndim))
    k = self.num_classes
    for what, values in (("gt", gt), ("pred", pred)):
      bad = counted & ((values < 0) | (values >= k))
      if bad.any():
        raise ValueError(f"{what} label {values[bad][0]} is outside 0..{k - 1} (and not ignore)")
    index = gt[counted].astype(np.int64) * k + pred[counted]
    self.matrix += np.bincount(index, minlength=k * k).reshape(k, k)

  def add_matrix(self, matrix):
    """Adds precomputed counts.

    Args:
      matrix: [K, K] non-negative counts, e.g. summed `confusion_matrix_update` outputs.
    """
    matrix = np.asarray(matrix)
    if matrix.shape != self.matrix.shape or (matrix < 0).any():
      raise ValueError(f"expected non-negative counts of shape {self.matrix.shape}, got {matrix}")
    self.matrix += matrix.astype(np.int64)

  def result(self):
    """Returns {'mIoU', 'IoU/<class>', 'pixel_accuracy'} as fractions (NaN where undefined)."""
    tp = np.diag(self.matrix).astype(np.float64)
    denominator = self.matrix.sum(0) + self.matrix.sum(1) - tp  # TP + FP + FN
    with np.errstate(divide="ignore", invalid="ignore"):
      iou = np.where(denominator > 0, tp / denominator, np.nan)
    total = self.matrix.sum()
    return {
      "mIoU": _mean_defined(iou.tolist()),
      **{f"IoU/{n}": float(v) for n, v in zip(self.class_names, iou, strict=True)},
      "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
    }
