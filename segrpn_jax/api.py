"""Pure functions for building, initialising and running SegRPN (inference and analysis).

`predict`, `predict_fusions` and `rpn_maps` are jitted with the model (hashable: its config is a
FrozenConfigDict) and `fusion`(s) as static arguments, so each (model, fusion) compiles once.
"""

import functools

import jax
import ml_collections

from segrpn_jax import checkpointing, parallel, state
from segrpn_jax.models.segrpn import SegRPN

# Building and initialising a model belong to the train state (segrpn_jax/state.py); they are
# part of this public surface too.
create_model = state.create_model
init_variables = state.init_variables

# The binary foreground map among `predict`'s outputs, best first: the class-agnostic map, or
# for the baseline (no class-agnostic module) the semantic head's thing probability.
FOREGROUND_KEYS = ("class_agnostic_prob", "semantic_foreground_prob")


@functools.partial(jax.jit, static_argnames=("model", "fusion"))
def predict(model: SegRPN, variables: dict, images: jax.Array, fusion: str | None = None) -> dict:
  """Inference forward.

  Args:
    model: the SegRPN module (static).
    variables: its variables.
    images: [B, H, W, 3] normalised images of config.data.image_size.
    fusion: RPN fusion at inference ('none', 'rpn', 'roi', 'roi+rpn'); None = the config's
      model.fusion.inference. Static.

  Returns:
    detections {boxes [B, 100, 4], scores, classes (1..K), valid}, proposals {boxes [B, P, 4],
    logits, scores (probabilities), valid, levels (2..6) and anchor_indices (into the
    concatenated anchors) of each kept proposal}; with a semantic head semantic_logits
    [B, H/4, W/4, 19], semantic_labels [B, H, W] and semantic_foreground_prob [B, H, W] (its
    total thing probability); with the class-agnostic module class_agnostic_logits (list of
    [B, H_l, W_l], P2..P6: the scale-divided level maps) and class_agnostic_prob [B, H, W] (the
    stride-4 class-agnostic map, upsampled to the input: what mIoU* scores).
  """
  out = model.apply(variables, images, train=False, fusion=fusion)
  out.pop("rpn_logits")  # every anchor's logit: for tests and analysis, not for evaluation
  return out


@functools.partial(jax.jit, static_argnames=("model", "fusions"))
def predict_fusions(
  model: SegRPN, variables: dict, images: jax.Array, fusions: tuple[str, ...]
) -> dict:
  """Inference under several RPN fusions at once (evaluation scores every one in one pass).

  Args:
    model: the SegRPN module (static).
    variables: its variables.
    images: [B, H, W, 3] normalised images of config.data.image_size.
    fusions: a non-empty tuple of fusions ('none', 'rpn', 'roi', 'roi+rpn'). Static.

  Backbone, FPN and the segmentation heads run once; the anchor scoring, proposals and box
  head once per fusion (SegRPN.predict_fusions).

  Returns:
    {'fusions': {fusion: {'detections': ..., 'proposals': ...}}} (each as `predict` under that
    fusion) plus the fusion-independent outputs of `predict` (semantic_*, class_agnostic_*).
  """
  if not fusions:
    raise ValueError("predict_fusions: fusions is empty; pass e.g. ('roi+rpn', 'none').")
  return model.apply(variables, images, fusions, method=SegRPN.predict_fusions)


@functools.partial(jax.jit, static_argnames=("model",))
def rpn_maps(model: SegRPN, variables: dict, images: jax.Array) -> dict:
  """Per-level RPN feature and objectness maps of both RPNs and their fusions (Fig. 1 and 3).

  Args:
    model: the SegRPN module (static).
    variables: its variables.
    images: [B, H, W, 3].

  Returns:
    {'P2': ..., 'P6': ...}; per level rpn_det_features [B, H_l, W_l, C], rpn_det_logits and
    rpn_det_objectness [B, H_l, W_l, A] (probability), and with RPN_mask also
    rpn_mask_features, rpn_mask_logits, rpn_mask_objectness, fused_features
    (F_det + F_det * F_mask) and fused_objectness {'rpn', 'roi', 'roi+rpn'}.
  """
  return model.apply(variables, images, method=SegRPN.rpn_maps)


def load(workdir: str, step: int | None = None) -> tuple[ml_collections.ConfigDict, SegRPN, dict]:
  """A training run's config, model and variables, from `workdir` (config.json + checkpoints).

  Args:
    workdir: the folder a `train.train_and_evaluate` run wrote.
    step: a checkpoint step; None = the latest.

  Returns:
    (config, model, variables), ready for `predict(model, variables, images)`.
  """
  config, model, variables, _ = load_checkpoint(workdir, step=step)
  return config, model, variables


def load_checkpoint(
  workdir: str, config: ml_collections.ConfigDict | None = None, step: int | None = None
) -> tuple[ml_collections.ConfigDict, SegRPN, dict, int]:
  """Like `load`, with the config optionally given and the restored step returned as well."""
  config = checkpointing.load_config(workdir) if config is None else config
  with checkpointing.create_manager(workdir, config) as manager:
    restored, step = state.restore_state(config, manager, parallel.make_mesh(), step)
  if restored is None:
    raise FileNotFoundError(
      f"no checkpoint in {checkpointing.checkpoint_dir(workdir)}: train first (--mode=train)."
    )
  return config, create_model(config), restored.variables(), step
