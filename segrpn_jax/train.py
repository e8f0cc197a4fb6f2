"""Training: `train_and_evaluate(config, workdir)`, the TrainState and the jitted train step.

One jitted `train_step(state, batch)` (defined in `state.py`, beside the TrainState it advances,
so that it imports no TensorFlow) runs data-parallel over every device on a ('data',) mesh:
the batch is sharded along its leading axis, the state is replicated, and XLA inserts the
gradient all-reduce. The same global batch therefore gives the same loss on 1 or N devices.
"""

import functools
import math
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from segrpn_jax import checkpointing, evaluate, input_pipeline, parallel, run_config
from segrpn_jax import state as state_lib
from segrpn_jax.state import train_step

# Keys of a batch that the jitted step consumes; host-only keys (image_id) stay outside.
BATCH_KEYS = (
  "image",
  "semantic",
  "instance_map",
  "crowd",
  "boxes",
  "classes",
  "valid",
  "example_mask",
)


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
  run_config.validate(config)
  # Before anything is written: a workdir of another run is refused and left as it is.
  run_config.check_workdir(workdir, config)
  checkpointing.save_config(workdir, config)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  manager = checkpointing.create_manager(workdir, config)
  try:
    return _train_and_evaluate(config, workdir, writer, manager)
  finally:
    # The last save lands even when training stops on an error, and the asynchronous
    # checkpointer's threads end here rather than at interpreter exit (where they fail noisily).
    manager.wait_until_finished()
    manager.close()


def _train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, writer: metric_writers.MetricWriter, manager
) -> dict:
  """The body of train_and_evaluate, once the workdir is known to be this run's."""
  mesh = parallel.make_mesh()
  replicated = parallel.replicated(mesh)
  data_sharding = parallel.data_sharding(mesh)
  logging.info("Devices: %s", jax.devices())

  model = state_lib.create_model(config)
  state, step = state_lib.restore_state(config, manager, mesh)
  if state is None:
    # Eager: init_variables jits the model init itself and merges pretrained weights on the host
    # (inside one jit they would become constants of the compiled program).
    state = jax.device_put(
      state_lib.init_state(config, jax.random.PRNGKey(config.seed)), replicated
    )
    step = 0
    writer.write_hparams(_flat_hparams(config))
  else:
    logging.info("Resumed from the checkpoint of step %d.", step)
    # Newer steps are ones restore found damaged; this run writes them again.
    checkpointing.set_aside_newer(manager, workdir, step)
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
