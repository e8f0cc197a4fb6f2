"""The train state: what a checkpoint holds, how a fresh one is made, how one is restored, and
`train_step`, the SGD step that advances it (importable without TensorFlow or CLU).

Below `api` in the import order (main -> train -> evaluate -> api -> state), so that loading a
run for inference never imports the training loop.
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from segrpn_jax import checkpointing, losses, optim, parallel, pretrained
from segrpn_jax.models import resnet
from segrpn_jax.models.segrpn import SegRPN

# XLA CPU/GPU options for code that runs once: skip the expensive backend optimisations.
_FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}

# `train` keys that only the run loop reads: neither the state's shapes nor the step depend on them.
RUN_LOOP_KEYS = (
  "batch_size",
  "num_steps",
  "checkpoint_every_steps",
  "keep_checkpoints",
  "eval_every_steps",
  "log_every_steps",
)


def state_config(config: ml_collections.ConfigDict) -> ml_collections.FrozenConfigDict:
  """The entries that define the train state and its step, frozen (hashable): config.model,
  config.loss, the training image size (`train_image_size`, as data.image_size) and
  config.train less RUN_LOOP_KEYS.

  Traced programs are kept per state_config (`abstract_state`, `train.jit_train_step`), so runs
  that differ only in data, schedule length or bookkeeping share them. Those programs are
  traced from this subset alone: one that read any other entry would fail on it, not go stale.
  """
  subset = ml_collections.ConfigDict(
    {
      "model": config.model.to_dict(),
      "loss": config.loss.to_dict(),
      "train": config.train.to_dict(),
      "data": {"image_size": train_image_size(config)},
    }
  )
  for key in RUN_LOOP_KEYS:
    del subset.train[key]
  return ml_collections.FrozenConfigDict(subset)


def train_image_size(config: ml_collections.ConfigDict) -> tuple[int, int]:
  """(height, width) of a training image: config.data.train_crop_size, else image_size."""
  return tuple(int(s) for s in (config.data.get("train_crop_size") or config.data.image_size))


def create_model(config: ml_collections.ConfigDict, image_size=None) -> SegRPN:
  """The SegRPN module of a config.

  Args:
    config: the full config (config.model and config.data.image_size are used).
    image_size: (height, width) of the input, default config.data.image_size (evaluation,
      inference); the train step's model takes `train_image_size(config)`. The parameters
      do not depend on it.

  Returns:
    SegRPN(config=FrozenConfigDict(config.model), image_size=image_size).
  """
  return SegRPN(
    config=ml_collections.FrozenConfigDict(config.model),
    image_size=tuple(int(s) for s in (image_size or config.data.image_size)),
  )


def init_variables(config: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  """Fresh variables, with the ImageNet backbone merged in when config.model.pretrained is set.

  The init runs under jax.jit on one dummy image of config.data.image_size, through
  `SegRPN.initialize` (every submodule, no proposals/NMS/RoIAlign) and with XLA's backend
  optimisations off: it runs once, and compiling ~300 random initialisers optimised costs
  tens of seconds on a CPU for no gain. Called under a trace (jax.jit or jax.eval_shape of a
  caller, e.g. init_state), it is traced into the caller's computation instead.

  Args:
    config: the full config.
    rng: PRNG key for the parameter initialisers.

  Returns:
    {'params': ..., 'frozen_bn': ... (norm frozen_bn), 'batch_stats': ... (norm bn)}.

  Raises:
    FileNotFoundError: config.model.pretrained names a file that does not exist.
    ValueError: the pretrained weights do not fit the backbone.
  """
  pretrained.check_pretrained_file(config)
  model = create_model(config)
  height, width = model.image_size
  dummy = jnp.zeros((1, height, width, 3), jnp.float32)
  if isinstance(rng, jax.core.Tracer):  # inside a caller's jit, that jit compiles it
    init = functools.partial(model.init, method=SegRPN.initialize)
  else:
    init = _jitted_init(model)
  variables = init({"params": rng}, dummy)
  variables = dict(variables)
  if config.model.pretrained:
    variables = pretrained.merge_pretrained_backbone(variables, config)
  return variables


@functools.lru_cache(maxsize=8)
def _jitted_init(model: SegRPN):
  """The model's init, jitted once per model for the process (each new jit would trace again)."""
  return jax.jit(
    functools.partial(model.init, method=SegRPN.initialize), compiler_options=_FAST_COMPILE
  )


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  extra: Any  # non-trainable variable collections: frozen BN statistics, batch_stats
  opt_state: Any
  rng: jax.Array

  def variables(self) -> dict:
    return {"params": self.params, **self.extra}


def frozen_prefixes(config: ml_collections.ConfigDict) -> list[tuple[str, ...]]:
  """Parameter paths the optimizer must never update (config.model.freeze_at)."""
  return [("backbone", name) for name in resnet.frozen_stages(config.model.freeze_at)]


def create_optimizer(config: ml_collections.ConfigDict, params):
  """(optax transformation, learning-rate schedule) of config.train for `params`."""
  return optim.create_optimizer(
    config.train, params, optim.frozen_predicate(frozen_prefixes(config))
  )


def init_state(config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
  """A fresh TrainState: variables (pretrained backbone merged in when configured) and opt state."""
  init_rng, state_rng = jax.random.split(rng)
  variables = dict(init_variables(config, init_rng))
  params = variables.pop("params")
  tx, _ = create_optimizer(config, params)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    extra=variables,
    opt_state=tx.init(params),
    rng=state_rng,
  )


def abstract_state(config: ml_collections.ConfigDict, mesh: Mesh) -> TrainState:
  """The state's shapes and dtypes, replicated over `mesh`, without computing anything (traced
  once per state_config and mesh for the process)."""
  # Shapes only: the pretrained weights (same shapes) need not be read, nor even be present.
  shapes_config = ml_collections.ConfigDict(config.to_dict())
  shapes_config.model.pretrained = ""
  return _abstract_state(state_config(shapes_config), mesh)


# Shapes only, no compiled program: cheap to keep for many configs (a process that loads many runs).
@functools.lru_cache(maxsize=64)
def _abstract_state(config: ml_collections.FrozenConfigDict, mesh: Mesh) -> TrainState:
  replicated = parallel.replicated(mesh)
  abstract = jax.eval_shape(functools.partial(init_state, config), jax.random.PRNGKey(0))
  return jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract
  )


def restore_state(
  config: ml_collections.ConfigDict, manager, mesh: Mesh, step: int | None = None
) -> tuple[TrainState | None, int | None]:
  """Restores the checkpoint of `step` (None: the latest), replicated over `mesh`.

  Returns:
    (state, step), or (None, None) when the run has no checkpoint yet.
  """
  return checkpointing.restore(manager, abstract_state(config, mesh), step)


def train_step(state: TrainState, batch: dict, *, model, config) -> tuple[TrainState, dict]:
  """One SGD step on a global batch.

  Args:
    state: the replicated train state.
    batch: the global batch (BATCH_KEYS), sharded along its leading axis.
    model: the SegRPN module (static).
    config: the full config (static).

  Returns:
    (new state, metrics): the total loss, every loss part, the learning rate and grad norm.
  """
  tx, schedule = create_optimizer(config, state.params)
  rng, step_rng = jax.random.split(state.rng)
  mutable = ["batch_stats"] if "batch_stats" in state.extra else False

  def loss_fn(params):
    variables = {"params": params, **state.extra}
    out = model.apply(
      variables,
      batch["image"],
      targets=batch,
      train=True,
      rngs={"sampling": step_rng},
      mutable=mutable,
    )
    outputs, updates = out if mutable else (out, {})
    loss, parts = losses.segrpn_loss(outputs, batch, config)
    return loss, (parts, updates)

  (loss, (parts, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
    step=state.step + 1,
    params=optax.apply_updates(state.params, param_updates),
    extra={**state.extra, **updates},
    opt_state=opt_state,
    rng=rng,
  )
  metrics = {
    "loss": loss,
    **parts,
    "learning_rate": schedule(state.step),
    "grad_norm": optax.global_norm(grads),
  }
  return new_state, metrics
