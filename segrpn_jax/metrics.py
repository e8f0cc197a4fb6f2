"""Evaluation metrics: COCO box AP50, AR@1000 and AR50@1000 scored by COCOeval, mIoU and mIoU*.

Detection metrics are computed on COCO exports (`to_coco_ground_truth`, `to_coco_json`), the
same dicts evaluation writes to disk, so anyone can re-score them with pycocotools. The scorer
is faster-coco-eval's `COCOeval_faster`, a C++ port of pycocotools' `COCOeval` with the same
numbers (tests/test_metrics.py checks it against pycocotools): pycocotools' pure-Python
matching takes about 11 minutes for AR@1000 on 500 images, faster-coco-eval about 15 seconds.

- `detection_ap`: COCOeval bbox at IoU 0.5, maxDets 100 (per image and category), 101-point
  AP per category; 'mAP50' averages the categories with non-ignored ground truth (NaN when
  none). Crowd annotations (iscrowd=1) are ignore regions: a detection whose intersection over
  its own area with one reaches 0.5 counts as neither TP nor FP.
- `proposal_recall`: COCOeval with useCats=0 (class-agnostic), maxDets [max_proposals]:
  'AR@1000' is the recall averaged over IoU 0.50:0.05:0.95 (COCO's AR), 'AR50@1000' the recall
  at IoU 0.5 alone. The paper's "Prop. AR at 1000" does not say which IoUs it averages, so both
  are reported.
- Both take area ranges (`level_area_ranges`: the box areas of each FPN level's scale case)
  and add a key per range that has ground truth: COCOeval's areaRng rule ignores ground truth
  outside the range and does not count unmatched detections outside it as false positives.

`ConfusionMatrix` follows the Cityscapes script: IoU = TP / (TP + FP + FN) per class, mean
over classes with a non-zero denominator. mIoU* (the binary foreground/background map) is the
2-class instance: `ConfusionMatrix(2)` fed 0 = background, 1 = foreground; its 'mIoU' is mIoU*.
"""

import contextlib
import io

import jax.numpy as jnp
import numpy as np
from faster_coco_eval import COCO, COCOeval_faster

from segrpn_jax.datasets import labels
from segrpn_jax.ops import scale

THING_CLASSES = labels.THING_NAMES  # detection classes 1..8
CITYSCAPES_CLASSES = labels.TRAIN_ID_NAMES  # the 19 trainIds
BINARY_CLASSES = ("background", "foreground")
COCO_ALL_AREAS = (0.0, 1e5**2)  # COCO's 'all' area range


def level_area_ranges(case: str, size_scale: float = 1.0) -> dict[str, tuple[float, float]]:
  """Box-area ranges of FPN levels 2..6 for COCOeval's areaRng, from ops/scale.py's side table.

  Args:
    case: config.model.scale_case; 'none' (every instance on every level) uses case1's ranges.
    size_scale: config.model.size_scale, multiplies the side thresholds.

  Returns:
    {'L2': (low, high), ..., 'L6': ...} in squared pixels: the sides [s_low, s_high) of
    `scale.level_membership` as areas [s_low^2, s_high^2). COCOeval's ranges are closed, so
    `high` is the float just below s_high^2 (a box on a threshold belongs to one level only);
    an unbounded level ends at COCO's 'all' limit 1e10.
  """
  if case not in scale.CASES:
    raise ValueError(f"unknown scale case {case!r} (config.model.scale_case); use {scale.CASES}")
  if not size_scale > 0:
    raise ValueError(f"config.model.size_scale must be > 0, got {size_scale!r}")
  sides = scale._SIDE_RANGES["case1" if case == "none" else case]  # the one table of thresholds
  ranges = {}
  for level, (low, high) in enumerate(sides, start=scale.MIN_LEVEL):
    top = COCO_ALL_AREAS[1] if np.isinf(high) else np.nextafter((high * size_scale) ** 2, 0.0)
    ranges[f"L{level}"] = (float((low * size_scale) ** 2), float(top))
  return ranges


def _image_entries(what, boxes, valid, **fields):
  """Checks one image's padded arrays; returns its valid entries (xyxy and xywh float64)."""
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
  out["xyxy"] = xyxy
  out["xywh"] = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], axis=1)
  return out


def _check_classes(what, classes, num_classes):
  classes = np.asarray(classes).astype(np.int64)
  if ((classes < 1) | (classes > num_classes)).any():
    raise ValueError(f"{what} classes of valid entries must be in 1..{num_classes}: {classes}")
  return classes


def with_crowd_regions(boxes_nx4, classes_n, valid_n, crowd_boxes_kx4, crowd_classes_k):
  """Appends crowd regions to one image's ground truth as crowd entries.

  Args:
    boxes_nx4, classes_n, valid_n: the image's `boxes`, `classes`, `valid` (batch contract).
    crowd_boxes_kx4, crowd_classes_k: its crowd regions (input_pipeline.crowd_regions).

  Returns:
    (boxes, classes, valid, crowd) with N + K entries, as `to_coco_ground_truth` takes them.
  """
  crowd_boxes = np.asarray(crowd_boxes_kx4, np.float64).reshape(-1, 4)
  k = len(crowd_boxes)
  boxes = np.concatenate([np.asarray(boxes_nx4, np.float64), crowd_boxes], axis=0)
  classes = np.concatenate([np.asarray(classes_n), np.asarray(crowd_classes_k)]).astype(np.int32)
  valid = np.concatenate([np.asarray(valid_n, bool), np.ones(k, bool)])
  crowd = np.concatenate([np.zeros(len(classes_n), bool), np.ones(k, bool)])
  return boxes, classes, valid, crowd


def to_coco_json(image_ids, boxes, scores, classes, valid=None, max_per_image=None):
  """Detections of several images in the COCO results format (what `COCO.loadRes` reads).

  Args:
    image_ids: one integer id per image (the ids of the matching ground-truth export).
    boxes: per image, [N, 4] xyxy boxes.
    scores: per image, [N] finite scores.
    classes: per image, [N] category ids.
    valid: per image, [N] bool, or None for all valid.
    max_per_image: keep only the highest-scoring this many valid entries of each image
      (stable sort, as COCOeval's), e.g. the 1000 proposals of AR@1000; None keeps all.

  Returns:
    A list of {'image_id', 'category_id', 'bbox': [x, y, w, h], 'score'} dicts, image by image
    in the order given (COCOeval breaks score ties by this order).
  """
  valid = [None] * len(image_ids) if valid is None else valid
  results = []
  for image_id, b, s, c, v in zip(image_ids, boxes, scores, classes, valid, strict=True):
    e = _image_entries("detection", b, v, scores=s, classes=c)
    if not np.isfinite(e["scores"]).all():
      raise ValueError(f"detection scores of image {image_id} must be finite: {e['scores']}")
    keep = np.argsort(-e["scores"].astype(np.float64), kind="stable")[:max_per_image]
    keep.sort()  # the given order among the kept entries
    rows = zip(
      e["xywh"][keep].tolist(), e["scores"][keep].tolist(), e["classes"][keep].tolist(),
      strict=True,
    )  # fmt: skip
    for xywh, score, cls in rows:
      results.append(
        {"image_id": int(image_id), "category_id": int(cls), "bbox": xywh, "score": float(score)}
      )
  return results


def to_coco_ground_truth(
  image_ids,
  boxes,
  classes,
  crowd,
  valid=None,
  class_names=THING_CLASSES,
  file_names=None,
  image_size=None,
):
  """Ground truth of several images as a COCO dataset dict (`COCO().dataset`).

  Args:
    image_ids: one integer id per image.
    boxes: per image, [N, 4] xyxy boxes.
    classes: per image, [N] category ids in 1..len(class_names).
    crowd: per image, [N] bool crowd flags (COCO's iscrowd: ignore regions).
    valid: per image, [N] bool, or None for all valid.
    class_names: category names; category id i + 1 is class_names[i].
    file_names: optional per image name (e.g. the tfds image_id) for images[].file_name.
    image_size: optional (height, width) of every image, for images[].height / width.

  Returns:
    {'images', 'annotations', 'categories'}; annotation ids start at 1 (COCOeval treats id 0
    as "unmatched") and 'area' is the box area w * h, so COCOeval's area ranges apply to boxes.
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
  images = [{"id": int(i)} for i in image_ids]
  for i, image in enumerate(images):
    if file_names is not None:
      image["file_name"] = str(file_names[i])
    if image_size is not None:
      image["height"], image["width"] = int(image_size[0]), int(image_size[1])
  return {
    "images": images,
    "annotations": annotations,
    "categories": [{"id": i + 1, "name": n} for i, n in enumerate(class_names)],
  }


def _cocoeval(ground_truth, results, *, use_cats, iou_thresholds, max_dets, area_ranges):
  """Runs COCOeval (bbox) quietly on copies of a dataset dict and a results list.

  Returns:
    COCOeval's `eval` dict; area range 0 is 'all', then `area_ranges` in their order.
  """
  # COCOeval writes 'ignore' and loadRes 'area', 'id', ... into the dicts: give it copies.
  dataset = {**ground_truth, "annotations": [dict(a) for a in ground_truth["annotations"]]}
  with contextlib.redirect_stdout(io.StringIO()):
    gt = COCO(dataset)
    dt = gt.loadRes([dict(r) for r in results])
    ev = COCOeval_faster(gt, dt, "bbox")
    ev.params.useCats = int(use_cats)
    ev.params.iouThrs = np.asarray(iou_thresholds, np.float64)
    ev.params.maxDets = [int(max_dets)]
    ev.params.areaRng = [list(COCO_ALL_AREAS)] + [list(r) for r in area_ranges.values()]
    ev.params.areaRngLbl = ["all", *area_ranges]
    ev.evaluate()
    ev.accumulate()
  return ev.eval


def detection_ap(ground_truth, detections, area_ranges=None, iou_threshold=0.5, max_detections=100):
  """Per-category box AP at one IoU threshold and its mean, by COCOeval.

  Args:
    ground_truth: a COCO dataset dict (`to_coco_ground_truth`); its categories name the keys.
    detections: COCO results (`to_coco_json`) for its images.
    area_ranges: optional {label: (low, high)} box-area ranges (`level_area_ranges`).
    iou_threshold: the matching IoU.
    max_detections: COCO's maxDets, per image and category.

  Returns:
    {'mAP50': mean over categories with non-ignored ground truth (NaN when none),
    'AP50/<category name>': per category (NaN without ground truth), 'AP50/<label>': the mean
    over categories within each area range, only for ranges that hold ground truth}.
  """
  area_ranges = area_ranges or {}
  tag = f"{round(100 * iou_threshold)}"
  precision = _cocoeval(
    ground_truth,
    detections,
    use_cats=True,
    iou_thresholds=[iou_threshold],
    max_dets=max_detections,
    area_ranges=area_ranges,
  )["precision"][0, :, :, :, 0]  # fmt: skip  [R, K, A]; -1 where a category has no truth
  per_class = [float(p.mean()) if (p > -1).all() else float("nan") for p in precision[:, :, 0].T]
  names = [c["name"] for c in ground_truth["categories"]]
  results = {f"mAP{tag}": _mean_defined(per_class)}
  results.update({f"AP{tag}/{n}": v for n, v in zip(names, per_class, strict=True)})
  for a, label in enumerate(area_ranges, start=1):
    defined = precision[:, :, a][:, (precision[:, :, a] > -1).all(0)]
    if defined.size:
      results[f"AP{tag}/{label}"] = float(defined.mean())
  return results


def proposal_recall(ground_truth, proposals, max_proposals=1000, area_ranges=None):
  """Class-agnostic COCO recall at `max_proposals` per image: averaged over IoU 0.50:0.05:0.95
  and at IoU 0.5 alone (one COCOeval run; 0.5 is the first of its thresholds).

  Args:
    ground_truth: a COCO dataset dict; categories are ignored (COCOeval useCats=0), crowd
      annotations of any class are ignore regions.
    proposals: COCO results, at most `max_proposals` per image counted (highest scores).
    max_proposals: COCO's maxDets.
    area_ranges: optional {label: (low, high)} box-area ranges (`level_area_ranges`).

  Returns:
    {'AR@<max_proposals>': average recall over IoU 0.50:0.95 (NaN without ground truth),
    'AR50@<max_proposals>': recall at IoU 0.5 (NaN likewise), and 'AR@<max>/<label>',
    'AR50@<max>/<label>' per area range that holds ground truth}.
  """
  area_ranges = area_ranges or {}
  recall = _cocoeval(
    ground_truth,
    proposals,
    use_cats=False,
    iou_thresholds=np.linspace(0.5, 0.95, 10),
    max_dets=max_proposals,
    area_ranges=area_ranges,
  )["recall"][:, 0, :, 0]  # fmt: skip  [T, A]; -1 without ground truth
  key, key50 = f"AR@{max_proposals}", f"AR50@{max_proposals}"
  defined = (recall[:, 0] > -1).all()
  results = {
    key: float(recall[:, 0].mean()) if defined else float("nan"),
    key50: float(recall[0, 0]) if defined else float("nan"),  # iouThrs[0] = 0.5
  }
  for a, label in enumerate(area_ranges, start=1):
    if (recall[:, a] > -1).all():
      results[f"{key}/{label}"] = float(recall[:, a].mean())
      results[f"{key50}/{label}"] = float(recall[0, a])
  return results


def _mean_defined(values):
  values = [v for v in values if not np.isnan(v)]
  return float(np.mean(values)) if values else float("nan")


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
