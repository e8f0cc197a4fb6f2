"""Training: `train_and_evaluate(config, workdir)`, the TrainState and the jitted train step.

One jitted `train_step(state, batch)` runs data-parallel over every device on a ('data',) mesh:
the batch is sharded along its leading axis, the state is replicated, and XLA inserts the
gradient all-reduce. The same global batch therefore gives the same loss on 1 or N devices.
"""

import functools
import math
from collections.abc import Iterator
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from jax.sharding import Mesh

from segrpn_jax import api, checkpointing, evaluate, input_pipeline, losses, optim, parallel
from segrpn_jax.models import resnet

# Keys of a batch that the jitted step consumes; host-only keys (image_id) stay outside.
BATCH_KEYS = (
  "image",
  "semantic",
  "instance_map",
  "crowd",
  "boxes",
  "classes",
  "valid",
  "crowd_boxes",
  "crowd_valid",
  "example_mask",
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


def create_optimizer(config, params):
  return optim.create_optimizer(
    config.train, params, optim.frozen_predicate(frozen_prefixes(config))
  )


def init_state(config: ml_collections.ConfigDict, rng: jax.Array) -> TrainState:
  """A fresh TrainState: variables (pretrained backbone merged in when configured) and opt state."""
  init_rng, state_rng = jax.random.split(rng)
  variables = dict(api.init_variables(config, init_rng))
  params = variables.pop("params")
  tx, _ = create_optimizer(config, params)
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    extra=variables,
    opt_state=tx.init(params),
    rng=state_rng,
  )


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


def check_files(config: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the config key, when the configured inputs are not on disk."""
  api.check_pretrained_file(config)
  input_pipeline.check_inputs(config)


def restore_state(
  config: ml_collections.ConfigDict, manager, mesh: Mesh, step: int | None = None
) -> tuple[TrainState | None, int | None]:
  """Restores the checkpoint of `step` (None: the latest), replicated over `mesh`.

  Returns:
    (state, step), or (None, None) when the run has no checkpoint yet.
  """
  replicated = parallel.replicated(mesh)
  # Shapes only: the pretrained weights (same shapes) need not be read, nor even be present.
  shapes_config = ml_collections.ConfigDict(config.to_dict())
  shapes_config.model.pretrained = ""
  abstract = jax.eval_shape(functools.partial(init_state, shapes_config), jax.random.PRNGKey(0))
  abstract = jax.tree.map(
    lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract
  )
  return checkpointing.restore(manager, abstract, step)


def _check_finite(metrics: dict, step: int) -> None:
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
    raise FloatingPointError(
      f"non-finite loss {loss} at step {step} (non-finite: {', '.join(bad)}); training stopped, "
      "the last checkpoint before it is kept."
    )


def _mean_metrics(history: list[dict]) -> dict:
  return {k: float(np.mean([h[k] for h in history])) for k in history[0]}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains with periodic checkpoints, summaries and evaluation; resumes from the latest checkpoint.

  Args:
    config: the full config (see configs/default.py).
    workdir: the run's folder: checkpoints, TensorBoard summaries, config.json, metrics_<step>.json.

  Returns:
    The metrics of the final evaluation.
  """
  check_files(config)
  checkpointing.save_config(workdir, config)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  mesh = parallel.make_mesh()
  replicated = parallel.replicated(mesh)
  data_sharding = parallel.data_sharding(mesh)
  parallel.check_batch_size(config.train.batch_size, "config.train.batch_size", mesh)
  logging.info("Devices: %s", jax.devices())

  model = api.create_model(config)
  manager = checkpointing.create_manager(workdir, config)
  state, step = restore_state(config, manager, mesh)
  if state is None:
    # Eager: init_variables jits the model init itself and merges pretrained weights on the host
    # (inside one jit they would become constants of the compiled program).
    state = jax.device_put(init_state(config, jax.random.PRNGKey(config.seed)), replicated)
    step = 0
    writer.write_hparams(_flat_hparams(config))
  else:
    logging.info("Resumed from the checkpoint of step %d.", step)
  state_sharding = jax.tree.map(lambda _: replicated, state)

  p_train_step = jax.jit(
    functools.partial(train_step, model=model, config=config),
    in_shardings=(state_sharding, data_sharding),
    out_shardings=(state_sharding, replicated),
    donate_argnums=0,
  )
  train_iter: Iterator[dict] = input_pipeline.create_train_iterator(config, start_step=step)
  eval_data = input_pipeline.create_eval_dataset(config)

  num_steps = config.train.num_steps
  hooks = []
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  if jax.process_index() == 0:
    hooks += [report, periodic_actions.Profile(logdir=workdir, num_profile_steps=5)]

  history: list[dict] = []
  pending = None  # (step, metrics) of the last dispatched step, read after the next dispatch
  results: dict = {}
  try:
    with metric_writers.ensure_flushes(writer):
      while step < num_steps:
        step += 1
        with jax.profiler.StepTraceAnnotation("train", step_num=step):
          batch = parallel.shard_batch(next(train_iter), data_sharding, BATCH_KEYS)
          state, metrics = p_train_step(state, batch)
        if pending is not None:  # read the previous step's metrics while this one runs
          history.append(jax.device_get(pending[1]))
          _check_finite(history[-1], pending[0])
        pending = (step, metrics)
        for hook in hooks:
          hook(step)
        last = step == num_steps
        log_now = step % config.train.log_every_steps == 0 or last
        # A checkpoint is only written after its step's loss has been seen to be finite.
        if log_now or last or manager.should_save(step):
          history.append(jax.device_get(metrics))
          _check_finite(history[-1], step)
          pending = None
          if log_now:
            writer.write_scalars(step, {f"train/{k}": v for k, v in _mean_metrics(history).items()})
            history = []
        checkpointing.save(manager, step, state, force=last)
        if step % config.train.eval_every_steps == 0 or last:
          with report.timed("eval"):
            results = evaluate.evaluate_variables(
              config, model, state.variables(), eval_data, step=step, workdir=workdir, writer=writer
            )
  finally:
    manager.wait_until_finished()  # the last save lands even when training stops on an error
  return results


def _flat_hparams(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
  flat = {}
  for key, value in config.items():
    name = f"{prefix}{key}"
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(_flat_hparams(value, name + "."))
    elif isinstance(value, (int, float, str, bool)):
      flat[name] = value
    else:
      flat[name] = str(value)
  return flat
