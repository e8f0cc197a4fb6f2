"""Evaluation on the validation split: mAP50 (and per class), mIoU (and per class), mIoU*, AR@1000.

When the model runs a fusion at inference, the same pass over the data also evaluates it with
the fusion switched off ('none'), the paper's "w/o ... during inference" rows; those numbers
carry the prefix `without_fusion/`.
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

from segrpn_jax import api, input_pipeline, metrics, parallel, run_config, summaries
from segrpn_jax.datasets import labels

# Binary foreground maps scored against labels.THING_TRAIN_IDS: metric name -> model output.
BINARY_MAPS = {"mIoU*": "foreground_prob", "mIoU*/class_agnostic": "class_agnostic_prob"}


def foreground_labels(semantic_bxhxw: jax.Array, crowd_bxhxw: jax.Array) -> jax.Array:
  """Binary ground truth of mIoU*: things 1, stuff 0, ignore (and crowd groups) 255.

  Crowd groups are thing pixels that are not instances; the class-agnostic training target
  ignores them, so mIoU* does too.
  """
  fg = jnp.isin(semantic_bxhxw, jnp.asarray(labels.THING_TRAIN_IDS)).astype(jnp.int32)
  return jnp.where((semantic_bxhxw == 255) | crowd_bxhxw, 255, fg)


@functools.partial(jax.jit, static_argnames=("model", "fusion", "num_classes"))
def eval_step(model, variables, batch, fusion, num_classes):
  """Inference on one batch plus the two confusion matrices (computed on device).

  Returns:
    (outputs, semantic confusion [K, K], {binary metric name: foreground confusion [2, 2]}
    for each BINARY_MAPS output the model has); padding examples of the
    last batch (example_mask False) add nothing to the matrices.
  """
  out = api.predict(model, variables, batch["image"], fusion=fusion)
  mask = batch["example_mask"]
  semantic_cm = None  # plain Faster R-CNN (semantic_head False) has no semantic map
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
  return out, semantic_cm, binary_cms


class _DetectionMetrics:
  """mAP50 and AR@1000 for one inference fusion setting."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.ap = metrics.DetectionAP(num_classes=config.model.num_classes)
    self.recall = metrics.ProposalRecall(max_proposals=config.eval.max_proposals)

  def add(self, out: dict, batch: dict) -> None:
    det, prop = out["detections"], out["proposals"]
    for i in np.flatnonzero(batch["example_mask"]):
      gt_boxes, gt_classes, gt_valid, gt_crowd = metrics.with_crowd_regions(
        batch["boxes"][i], batch["classes"][i], batch["valid"][i],
        batch["crowd_boxes"][i], batch["crowd_valid"][i],
      )  # fmt: skip
      self.ap.add(
        det["boxes"][i], det["scores"][i], det["classes"][i], det["valid"][i],
        gt_boxes, gt_classes, gt_valid, gt_crowd,
      )  # fmt: skip
      self.recall.add(
        prop["boxes"][i], prop["valid"][i], gt_boxes, gt_valid, gt_crowd, scores=prop["scores"][i]
      )

  def result(self) -> dict:
    return {**self.ap.result(), **self.recall.result()}


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
    workdir: where `metrics_<step>.json` is written (None: nowhere).
    writer: a CLU writer for scalars and image summaries (None: none).

  Returns:
    {'mAP50', 'AP50/<class>', 'AR@1000', 'mIoU', 'IoU/<class>', 'pixel_accuracy', 'mIoU*',
    'mIoU*/class_agnostic' (with the class-agnostic module), ...};
    with an inference fusion also the same detection metrics under 'without_fusion/'.
  """
  fusion = config.model.fusion.inference
  fusions = [fusion] + (["none"] if fusion != "none" else [])
  detection = {f: _DetectionMetrics(config) for f in fusions}
  semantic = metrics.ConfusionMatrix(
    config.model.num_semantic_classes, class_names=metrics.CITYSCAPES_CLASSES
  )
  binary = {
    name: metrics.ConfusionMatrix(2, class_names=metrics.BINARY_CLASSES) for name in BINARY_MAPS
  }
  images = []
  mesh = parallel.make_mesh()
  sharding = parallel.data_sharding(mesh)
  for batch in eval_data:
    device_batch = parallel.shard_batch(batch, sharding, input_pipeline.EVAL_DEVICE_KEYS)
    # Every process scores the whole global batch, so the host metrics see every image.
    batch = parallel.gather_host({k: v for k, v in batch.items() if k != "image_id"})
    for f in fusions:
      out, semantic_cm, binary_cms = eval_step(
        model, variables, device_batch, f, config.model.num_semantic_classes
      )
      out, semantic_cm, binary_cms = parallel.to_host((out, semantic_cm, binary_cms))
      detection[f].add(out, batch)
      if f == fusion:  # the segmentation outputs do not depend on the RPN fusion
        if semantic_cm is not None:
          semantic.add_matrix(np.asarray(semantic_cm))
        for name, matrix in binary_cms.items():
          binary[name].add_matrix(np.asarray(matrix))
        if len(images) < config.eval.num_image_summaries:
          images += _summary_images(out, batch)[: config.eval.num_image_summaries - len(images)]

  results = detection[fusion].result()
  if config.model.semantic_head:
    results.update(semantic.result())
  for name, matrix in binary.items():
    if matrix.matrix.any():
      results[name] = matrix.result()["mIoU"]
  for f in fusions[1:]:
    results.update({f"without_fusion/{k}": v for k, v in detection[f].result().items()})
  results = {k: float(v) for k, v in results.items()}
  logging.info("Eval at step %d: %s", step, {k: round(v, 4) for k, v in results.items()})
  if workdir is not None and jax.process_index() == 0:
    with open(os.path.join(workdir, f"metrics_{step}.json"), "w") as f:
      json.dump(results, f, indent=2, sort_keys=True)
  if writer is not None:
    writer.write_scalars(step, {f"eval/{k}": v for k, v in results.items()})
    if images:
      writer.write_images(step, {"eval/detections_and_semantic": np.stack(images)})
  return results


def _summary_images(out: dict, batch: dict) -> list[np.ndarray]:
  """Per example: detections on the image beside the predicted semantic overlay."""
  pictures = []
  det = out["detections"]
  for i in np.flatnonzero(batch["example_mask"]):
    rgb = summaries.denormalize(batch["image"][i])
    boxes = summaries.draw_boxes(rgb, det["boxes"][i], det["classes"][i], det["valid"][i])
    if "semantic_labels" in out:
      boxes = np.concatenate([boxes, summaries.semantic_overlay(rgb, out["semantic_labels"][i])], 1)
    pictures.append(boxes)
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
