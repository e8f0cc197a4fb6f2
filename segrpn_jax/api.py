"""Pure functions for building, initialising and running SegRPN (inference and analysis).

`predict` and `rpn_maps` are jitted with the model (hashable: its config is a FrozenConfigDict)
and `fusion` as static arguments, so each (model, fusion) compiles once.
"""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections

from segrpn_jax import pretrained
from segrpn_jax.models.segrpn import SegRPN, resnet_depth

# XLA CPU/GPU options for code that runs once: skip the expensive backend optimisations.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def create_model(config: ml_collections.ConfigDict) -> SegRPN:
  """The SegRPN module of a config.

  Args:
    config: the full config (config.model and config.data.image_size are used).

  Returns:
    SegRPN(config=FrozenConfigDict(config.model), image_size=config.data.image_size).
  """
  return SegRPN(
    config=ml_collections.FrozenConfigDict(config.model),
    image_size=tuple(int(s) for s in config.data.image_size),
  )


def init_variables(config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  """Fresh variables, with the ImageNet backbone merged in when config.model.pretrained is set.

  The init runs under jax.jit on one dummy image of config.data.image_size, through
  `SegRPN.initialize` (every submodule, no proposals/NMS/RoIAlign) and with XLA's backend
  optimisations off: it runs once, and compiling ~300 random initialisers optimised costs
  tens of seconds on a CPU for no gain. Called under a trace (jax.jit or jax.eval_shape of a
  caller, e.g. train.init_state), it is traced into the caller's computation instead.

  Args:
    config: the full config.
    rng: PRNG key for the parameter initialisers.

  Returns:
    {'params': ..., 'frozen_bn': ... (norm frozen_bn), 'batch_stats': ... (norm bn)}.

  Raises:
    FileNotFoundError: config.model.pretrained names a file that does not exist.
    ValueError: the pretrained weights do not fit the backbone.
  """
  check_pretrained_file(config)
  model = create_model(config)
  height, width = model.image_size
  dummy = jnp.zeros((1, height, width, 3), jnp.float32)
  init = functools.partial(model.init, method=SegRPN.initialize)
  if not isinstance(rng, jax.core.Tracer):  # inside a caller's jit, that jit compiles it
    init = jax.jit(init, compiler_options=_FAST_COMPILE)
  variables = init({"params": rng}, dummy)
  variables = dict(variables)
  if config.model.pretrained:
    variables = merge_pretrained_backbone(variables, config)
  return variables


def merge_pretrained_backbone(variables: dict, config: ml_collections.ConfigDict) -> dict:
  """Replaces the backbone's variables by torchvision ImageNet weights.

  norm 'frozen_bn' takes the BatchNorm statistics and affine as they are; norm 'bn' puts the
  affine into params (scale, bias) and the statistics into batch_stats (mean, var); 'gn' has
  no ImageNet weights.

  Args:
    variables: the model's freshly initialised variables.
    config: the full config (model.pretrained, model.backbone, model.norm,
      model.width_multiplier).

  Returns:
    variables with variables[collection]['backbone'] replaced.
  """
  m = config.model
  path = check_pretrained_file(config)
  loaded = pretrained.load_torchvision_resnet(path, resnet_depth(m.backbone), m.width_multiplier)
  merged = {k: dict(v) for k, v in variables.items()}
  if m.norm == "frozen_bn":
    replacements = {"params": loaded["params"], "frozen_bn": loaded["frozen_bn"]}
  elif m.norm == "bn":
    affine = _split_bn(loaded["frozen_bn"], ("scale", "bias"))
    replacements = {
      "params": _merge_trees(loaded["params"], affine),
      "batch_stats": _split_bn(loaded["frozen_bn"], ("mean", "var")),
    }
  else:
    raise ValueError(
      f"config.model.pretrained is set but config.model.norm = {m.norm!r}: ImageNet ResNet "
      "weights exist for frozen_bn and bn only."
    )
  for collection, tree in replacements.items():
    expected = jax.tree.map(jnp.shape, merged[collection]["backbone"])
    got = jax.tree.map(jnp.shape, tree)
    if expected != got:
      raise ValueError(
        f"config.model.pretrained = {m.pretrained!r} does not fit the {m.backbone} backbone's "
        f"'{collection}' variables (check config.model.backbone and width_multiplier)."
      )
    merged[collection]["backbone"] = tree
  return merged


def check_pretrained_file(config: ml_collections.ConfigDict) -> str:
  """The expanded path of config.model.pretrained; an error naming the key if it is missing."""
  path = os.path.expanduser(config.model.pretrained)
  if config.model.pretrained and not os.path.exists(path):
    raise FileNotFoundError(
      f"config.model.pretrained = {config.model.pretrained!r} does not exist; point it at a "
      "torchvision ResNet state dict (.pth/.npz/.safetensors; scripts/convert_resnet.py and the "
      "README's 'Pretrained weights' say how to make one) or set it to '' to train from scratch."
    )
  return path


def _split_bn(tree: dict, leaves: tuple[str, ...]) -> dict:
  """The sub-tree of BatchNorm nodes keeping only the given leaf names."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      if set(value) == {"scale", "bias", "mean", "var"}:
        out[key] = {leaf: value[leaf] for leaf in leaves}
      else:
        out[key] = _split_bn(value, leaves)
  return out


def _merge_trees(a: dict, b: dict) -> dict:
  """Recursive union of two nested dicts (b wins on leaves present in both)."""
  out = dict(a)
  for key, value in b.items():
    out[key] = _merge_trees(out[key], value) if isinstance(out.get(key), dict) else value
  return out


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
    logits, scores (probabilities), valid}, semantic_logits [B, H/4, W/4, 19] and
    semantic_labels [B, H, W] (with a semantic head), class_agnostic_logits (list of
    [B, H_l, W_l], P2..P6), foreground_prob [B, H, W] (the semantic head's thing
    probability, see SegRPN._semantic_foreground) and class_agnostic_prob [B, H, W] (the union
    of the class-agnostic levels).
  """
  out = model.apply(variables, images, train=False, fusion=fusion)
  out.pop("rpn_logits")  # every anchor's logit: for tests and analysis, not for evaluation
  return out


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


# --------------------------------------------------------------------------------------------
# load(workdir, step=None) -> (config, model, variables): restores a training run's checkpoint.
# Written together with the training code (segrpn_jax/train.py, segrpn_jax/checkpointing.py);
# it belongs here, below this line.
# --------------------------------------------------------------------------------------------


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
  from segrpn_jax import checkpointing, parallel, train  # here: train imports this module

  config = checkpointing.load_config(workdir) if config is None else config
  manager = checkpointing.create_manager(workdir, config)
  state, step = train.restore_state(config, manager, parallel.make_mesh(), step)
  if state is None:
    raise FileNotFoundError(
      f"no checkpoint in {checkpointing.checkpoint_dir(workdir)}: train first (--mode=train)."
    )
  return config, create_model(config), state.variables(), step
