"""Evaluation on the validation split: mAP50, AR50@1000 and AR@1000 (per class and per FPN level),
mIoU, mIoU*.

One pass over the data runs the model under every inference fusion obtained by switching parts
of the training fusion off (the paper's "w/o ... during inference" rows): their metrics carry
the prefix `inference/<fusion>/`; the unprefixed detection metrics are those of
config.model.fusion.inference. Detection metrics are COCOeval's on COCO exports that
evaluation writes to `workdir/eval_<step>/` (ground_truth.json, detections.json of the
inference fusion, proposals.json: its top config.eval.max_proposals proposals per image), so
they can be re-scored with pycocotools. The log shows the metrics as tables
(`format_results`); TensorBoard gets the scalars and, per summary image, the ground truth beside
the detections (and the semantic ground truth beside the prediction).
"""

import functools
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from tqdm import tqdm

from segrpn_jax import api, input_pipeline, metrics, parallel, run_config, summaries
from segrpn_jax.datasets import labels
from segrpn_jax.models import rpn as rpn_lib

# Binary foreground maps scored against `foreground_labels`: metric name -> model output.
# 'mIoU*' is the class-agnostic module's map, so the baseline (without it) has no 'mIoU*'.
BINARY_MAPS = {"mIoU*": "class_agnostic_prob", "mIoU*/semantic": "semantic_foreground_prob"}
_ID_BYTES = 256  # tfds image ids travel between processes as fixed-width bytes


def foreground_labels(semantic_bxhxw: jax.Array, crowd_bxhxw: jax.Array) -> jax.Array:
  """Binary ground truth of mIoU*: things 1, stuff 0, ignore (and crowd groups) 255.

  Crowd groups are thing pixels that are not instances; the class-agnostic training target
  ignores them, so mIoU* does too.
  """
  fg = jnp.isin(semantic_bxhxw, jnp.asarray(labels.THING_TRAIN_IDS)).astype(jnp.int32)
  return jnp.where((semantic_bxhxw == 255) | crowd_bxhxw, 255, fg)


def evaluated_fusions(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """config.model.fusion.inference first, then the other fusions of the training fusion."""
  inference = config.model.fusion.inference
  others = [f for f in rpn_lib.inference_fusions(config.model.fusion.train) if f != inference]
  return (inference, *others)


@functools.partial(jax.jit, static_argnames=("model", "fusions", "num_classes"))
def eval_step(model, variables, batch, fusions, num_classes):
  """Inference under `fusions` on one batch plus the confusion matrices (computed on device).

  Returns:
    (outputs of api.predict_fusions, semantic confusion [K, K] or None without a semantic head,
    {binary metric name: foreground confusion [2, 2]} for each BINARY_MAPS output the model
    has); padding examples of the last batch (example_mask False) add nothing to the matrices.
  """
  out = api.predict_fusions(model, variables, batch["image"], fusions)
  mask = batch["example_mask"]
  semantic_cm = None
  if "semantic_labels" in out:
    semantic_cm = metrics.confusion_matrix_update(
      out["semantic_labels"], batch["semantic"], num_classes, mask=mask
    )
  fg_gt = foreground_labels(batch["semantic"], batch["crowd"])
  binary_cms = {
    name: metrics.confusion_matrix_update((out[key] > 0.5).astype(jnp.int32), fg_gt, 2, mask=mask)
    for name, key in BINARY_MAPS.items()
    if key in out
  }
  # Only what the host needs leaves the device (not the per-level logits).
  host_out = {k: out[k] for k in ("fusions", "semantic_labels") if k in out}
  return host_out, semantic_cm, binary_cms


def _encode_ids(image_ids) -> np.ndarray:
  """tfds image ids (bytes) -> uint8 [B, _ID_BYTES], so processes can all-gather them."""
  out = np.zeros((len(image_ids), _ID_BYTES), np.uint8)
  for i, image_id in enumerate(image_ids):
    raw = bytes(image_id)
    if len(raw) > _ID_BYTES:
      raise ValueError(f"image_id {raw[:60]!r}... is longer than {_ID_BYTES} bytes")
    out[i, : len(raw)] = np.frombuffer(raw, np.uint8)
  return out


class _CocoCollector:
  """Per-image ground truth and every fusion's detections and proposals, for the COCO exports."""

  def __init__(self, fusions: tuple[str, ...]):
    self.gt = {"boxes": [], "classes": [], "valid": [], "crowd": [], "file_names": []}
    self.dets = {f: {"boxes": [], "scores": [], "classes": [], "valid": []} for f in fusions}
    self.props = {f: {"boxes": [], "scores": [], "valid": []} for f in fusions}

  def add(self, out: dict, batch: dict) -> None:
    for i in np.flatnonzero(batch["example_mask"]):
      crowd_boxes, crowd_classes = input_pipeline.crowd_regions(
        batch["crowd"][i], batch["semantic"][i]
      )
      boxes, classes, valid, crowd = metrics.with_crowd_regions(
        batch["boxes"][i], batch["classes"][i], batch["valid"][i], crowd_boxes, crowd_classes
      )
      for key, value in zip(self.gt, (boxes, classes, valid, crowd), strict=False):
        self.gt[key].append(value)  # the first four keys; file_names below
      self.gt["file_names"].append(bytes(batch["image_id"][i]).rstrip(b"\0").decode())
      for f, fused in out["fusions"].items():
        for key in self.dets[f]:
          self.dets[f][key].append(fused["detections"][key][i])
        for key in self.props[f]:
          self.props[f][key].append(fused["proposals"][key][i])

  def ground_truth(self, image_size) -> dict:
    """The ground truth as a COCO dataset dict; images have ids 1, 2, ... in evaluation order."""
    return metrics.to_coco_ground_truth(
      range(1, len(self.gt["boxes"]) + 1), self.gt["boxes"], self.gt["classes"],
      self.gt["crowd"], self.gt["valid"], file_names=self.gt["file_names"], image_size=image_size,
    )  # fmt: skip

  def results(self, fusion: str, max_proposals: int) -> tuple[list, list]:
    """(detections, proposals) of one fusion as COCO results; proposals class-agnostic."""
    ids = range(1, len(self.gt["boxes"]) + 1)
    d, p = self.dets[fusion], self.props[fusion]
    detections = metrics.to_coco_json(ids, d["boxes"], d["scores"], d["classes"], d["valid"])
    ones = [np.ones(len(b), np.int32) for b in p["boxes"]]  # class-agnostic: category 1
    proposals = metrics.to_coco_json(
      ids, p["boxes"], p["scores"], ones, p["valid"], max_per_image=max_proposals
    )
    return detections, proposals


def evaluate_variables(
  config: ml_collections.ConfigDict,
  model,
  variables,
  eval_data,
  step: int,
  workdir: str | None = None,
  writer: metric_writers.MetricWriter | None = None,
) -> dict:
  """Runs the evaluation split once and returns every metric (fractions in [0, 1]).

  Args:
    config: the full config.
    model: the SegRPN module.
    variables: its variables.
    eval_data: re-iterable NumPy batches (input_pipeline.create_eval_dataset).
    step: the training step the variables belong to (for file names and summaries).
    workdir: where `metrics_<step>.json` and the COCO exports `eval_<step>/ground_truth.json`,
      `detections.json`, `proposals.json` are written, by process 0 (None: nowhere).
    writer: a CLU writer for scalars and image summaries (None: none).

  Returns:
    {'mAP50', 'AP50/<class>', 'AP50/L<l>', 'AR@<P>', 'AR@<P>/L<l>' (IoU 0.50:0.95),
    'AR50@<P>', 'AR50@<P>/L<l>' (IoU 0.5) (P = config.eval.max_proposals; level keys only for
    levels with ground truth) of
    config.model.fusion.inference, the same under 'inference/<fusion>/' for every evaluated
    fusion, 'mIoU', 'IoU/<class>', 'pixel_accuracy' (with a semantic head), 'mIoU*' (with the
    class-agnostic module) and 'mIoU*/semantic' (with a semantic head)}.
  """
  fusions = evaluated_fusions(config)
  collector = _CocoCollector(fusions)
  semantic = metrics.ConfusionMatrix(
    config.model.num_semantic_classes, class_names=metrics.CITYSCAPES_CLASSES
  )
  binary = {
    name: metrics.ConfusionMatrix(2, class_names=metrics.BINARY_CLASSES) for name in BINARY_MAPS
  }
  images = []
  mesh = parallel.make_mesh()
  sharding = parallel.data_sharding(mesh)
  num_examples = getattr(eval_data, "num_examples", None)
  if num_examples is not None:  # every process shows the whole split's count
    num_examples = int(parallel.gather_host(np.asarray([num_examples])).sum())
  # disable=None: a bar on a terminal, nothing in redirected logs; only process 0 draws it.
  progress = tqdm(
    total=num_examples, desc=f"eval step {step}", unit="img",
    disable=None if jax.process_index() == 0 else True,
  )  # fmt: skip
  for batch in eval_data:
    device_batch = parallel.shard_batch(batch, sharding, input_pipeline.EVAL_DEVICE_KEYS)
    # Every process scores the whole global batch, so the host metrics see every image.
    host_batch = {k: v for k, v in batch.items() if k != "image_id"}
    host_batch["image_id"] = _encode_ids(batch["image_id"])
    batch = parallel.gather_host(host_batch)
    out, semantic_cm, binary_cms = eval_step(
      model, variables, device_batch, fusions, config.model.num_semantic_classes
    )
    out, semantic_cm, binary_cms = parallel.to_host((out, semantic_cm, binary_cms))
    collector.add(out, batch)
    if semantic_cm is not None:
      semantic.add_matrix(np.asarray(semantic_cm))
    for name, matrix in binary_cms.items():
      binary[name].add_matrix(np.asarray(matrix))
    if len(images) < config.eval.num_image_summaries:
      images += _summary_images(out, batch, fusions[0])[
        : config.eval.num_image_summaries - len(images)
      ]
    progress.update(int(np.sum(batch["example_mask"])))
  progress.close()

  results = _detection_metrics(config, collector, fusions, step, workdir)
  if config.model.semantic_head:
    results.update(semantic.result())
  for name, matrix in binary.items():
    if matrix.matrix.any():
      results[name] = matrix.result()["mIoU"]
  results = {k: float(v) for k, v in results.items()}
  logging.info(
    "Eval at step %d, %d images, in percent:\n%s",
    step, len(collector.gt["boxes"]), format_results(results, fusions, config.eval.max_proposals),
  )  # fmt: skip
  if workdir is not None and jax.process_index() == 0:
    with open(os.path.join(workdir, f"metrics_{step}.json"), "w") as f:
      json.dump(results, f, indent=2, sort_keys=True)
  if writer is not None:
    writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
    if images:
      writer.write_images(step, {"eval/truth_and_prediction": np.stack(images)})
  return results


def _percent(value) -> str:
  """A fraction as a percentage cell: '45.12', 'nan', or '-' for a metric not reported."""
  if value is None:
    return "-"
  return "nan" if np.isnan(value) else f"{100 * value:.2f}"


def _text_table(header: list[str], rows: list[list[str]]) -> list[str]:
  """Columns padded to their widest cell; the first column left-aligned, the others right."""
  widths = [max(len(row[c]) for row in [header, *rows]) for c in range(len(header))]
  lines = []
  for row in [header, *rows]:
    cells = [row[0].ljust(widths[0])]
    cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
    lines.append("  ".join(cells).rstrip())
  return lines


def format_results(results: dict, fusions: tuple[str, ...], max_proposals: int = 1000) -> str:
  """The metrics of `evaluate_variables` as plain-text tables, in percent.

  Args:
    results: the metrics dict (fractions).
    fusions: the evaluated fusions, the inference fusion first (`evaluated_fusions`).
    max_proposals: config.eval.max_proposals, the P of the AR@P keys.

  Returns:
    Per fusion mAP50, AR50@P (IoU 0.5) and AR@P (IoU 0.50:0.95); per FPN level of the
    inference fusion AP50, AR50@P, AR@P; mIoU, mIoU* and mIoU*/semantic; per class AP50 of
    every fusion. '-' marks a metric the run does not report (a level without ground truth, the
    baseline's mIoU*).
  """
  detection = ("mAP50", f"AR50@{max_proposals}", f"AR@{max_proposals}")

  def of(fusion, key):  # the unprefixed keys are the inference fusion's
    default = results.get(key) if fusion == fusions[0] else None
    return results.get(f"inference/{fusion}/{key}", default)

  by_fusion = []
  for fusion in fusions:
    name = fusion + (" (inference)" if fusion == fusions[0] else "")
    by_fusion.append([name, *(_percent(of(fusion, k)) for k in detection)])
  lines = _text_table(["fusion", *detection], by_fusion)

  per_level = ("AP50", *detection[1:])
  prefixes = tuple(f"{name}/L" for name in per_level)
  levels = sorted({k.rsplit("/", 1)[1] for k in results if k.startswith(prefixes)})
  if levels:
    rows = [
      [level, *(_percent(results.get(f"{k}/{level}")) for k in per_level)] for level in levels
    ]
    lines += ["", *_text_table([f"level ({fusions[0]})", *per_level], rows)]

  segmentation = ["mIoU", "mIoU*", "mIoU*/semantic"]
  lines += ["", *_text_table(segmentation, [[_percent(results.get(k)) for k in segmentation]])]

  rows = [[c, *(_percent(of(f, f"AP50/{c}")) for f in fusions)] for c in metrics.THING_CLASSES]
  lines += ["", *_text_table(["AP50", *fusions], rows)]
  return "\n".join(lines)


def _detection_metrics(config, collector, fusions, step, workdir) -> dict:
  """COCOeval's detection metrics of every fusion; writes the inference fusion's exports."""
  m = config.model
  area_ranges = metrics.level_area_ranges(m.scale_case, m.size_scale)
  max_proposals = config.eval.max_proposals
  results = {}
  ground_truth = collector.ground_truth(tuple(config.data.image_size))
  for fusion in fusions:
    detections, proposals = collector.results(fusion, max_proposals)
    scores = {
      **metrics.detection_ap(ground_truth, detections, area_ranges),
      **metrics.proposal_recall(ground_truth, proposals, max_proposals, area_ranges),
    }
    results.update({f"inference/{fusion}/{k}": v for k, v in scores.items()})
    if fusion != fusions[0]:
      continue
    results.update(scores)
    if workdir is not None and jax.process_index() == 0:
      folder = os.path.join(workdir, f"eval_{step}")
      os.makedirs(folder, exist_ok=True)
      for name, content in (
        ("ground_truth", ground_truth), ("detections", detections), ("proposals", proposals)
      ):  # fmt: skip
        with open(os.path.join(folder, f"{name}.json"), "w") as f:
          json.dump(content, f)
  return results


def _summary_images(out: dict, batch: dict, fusion: str) -> list[np.ndarray]:
  """Per example: the ground-truth boxes beside `fusion`'s detections and, with a semantic
  head, the ground-truth semantic map beside the predicted one, as titled panels."""
  pictures = []
  det = out["fusions"][fusion]["detections"]
  for i in np.flatnonzero(batch["example_mask"]):
    rgb = summaries.denormalize(batch["image"][i])
    truth = summaries.draw_detections(
      rgb, batch["boxes"][i], None, batch["classes"][i], batch["valid"][i]
    )
    found = summaries.draw_detections(
      rgb, det["boxes"][i], det["scores"][i], det["classes"][i], det["valid"][i]
    )
    rows = [[("ground truth", truth), (f"detections ({fusion})", found)]]
    if "semantic_labels" in out:
      rows.append([
        ("semantic ground truth", summaries.semantic_overlay(rgb, batch["semantic"][i])),
        ("semantic prediction", summaries.semantic_overlay(rgb, out["semantic_labels"][i])),
      ])  # fmt: skip
    pictures.append(summaries.panels(rows))
  return pictures


def evaluate(config: ml_collections.ConfigDict, workdir: str, step: int | None = None) -> dict:
  """Evaluates the checkpoint of `step` (default: the latest) of the run in `workdir`.

  Args:
    config: the config to evaluate with (its model must match the run's).
    workdir: the training run's folder.
    step: a checkpoint step, None = the latest.

  Returns:
    The metrics dict of `evaluate_variables`; also written to `workdir/metrics_<step>.json`.
  """
  run_config.validate(config)
  _, model, variables, step = api.load_checkpoint(workdir, config=config, step=step)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  eval_data = input_pipeline.create_eval_dataset(config)
  with metric_writers.ensure_flushes(writer):
    return evaluate_variables(config, model, variables, eval_data, step, workdir, writer)
