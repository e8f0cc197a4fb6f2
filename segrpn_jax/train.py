"""Training: `train_and_evaluate(config, workdir)`, the TrainState and the jitted train step.

One jitted `train_step(state, batch)` (defined in `state.py`, beside the TrainState it advances,
so that it imports no TensorFlow) runs data-parallel over every device on a ('data',) mesh:
the batch is sharded along its leading axis, the state is replicated, and XLA inserts the
gradient all-reduce. The same global batch therefore gives the same loss on 1 or N devices.

A run holds its workdir's lock (`run_config.lock_workdir`) from before its first write to its
end. SIGTERM or SIGINT lets the step in flight finish, saves its checkpoint, flushes the writers
and raises `Interrupted` (main exits with 128 + the signal's number: 143 for SIGTERM, 130 for
SIGINT); a second signal ends the process at once.
"""

import functools
import math
import os
import signal
import threading
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from jax.experimental import multihost_utils

from segrpn_jax import checkpointing, errors, evaluate, input_pipeline, parallel, run_config
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


class Interrupted(Exception):
  """Training stopped on a signal after saving the checkpoint of `step`; the same command
  resumes it. `exit_status` is 128 + the signal's number, as a shell reports that signal."""

  def __init__(self, signum: int, step: int, checkpoints: str):
    self.signum, self.step = signum, step
    self.exit_status = 128 + signum
    super().__init__(
      f"stopped by {signal.Signals(signum).name} after step {step}, whose checkpoint is saved "
      f"in {checkpoints}; run the same command again to resume from it."
    )


def _preemption_notifier() -> bool:
  """Whether JAX's preemption sync manager runs (multi-process runs, when the service is on)."""
  from jax._src import distributed

  return getattr(distributed.global_state, "preemption_sync_manager", None) is not None


class StopRequest:
  """SIGTERM and SIGINT, caught for the duration of a run (a context manager).

  The first signal only sets a flag that `reached(step)` reports after the step in flight; the
  handlers then give way to the signals' default action, so a second signal ends the process
  at once. In a multi-process run with JAX's preemption service, SIGTERM is left to JAX's
  notifier (SIGINT is passed on to it as SIGTERM) and `reached` is JAX's preemption sync point,
  so every process stops after the same step. Outside the main thread (where Python cannot
  catch signals) nothing is installed.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict[int, object] = {}
    self._jax_notifier = jax.process_count() > 1 and _preemption_notifier()

  def __enter__(self) -> "StopRequest":
    if threading.current_thread() is threading.main_thread():
      signums = [signal.SIGINT] if self._jax_notifier else [signal.SIGINT, signal.SIGTERM]
      for signum in signums:
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)

  def _handle(self, signum: int, frame) -> None:
    del frame
    self.signum = signum
    for handled in self._previous:
      signal.signal(handled, signal.SIG_DFL)
    logging.warning(
      "%s received: finishing the current step and saving its checkpoint (a second signal "
      "ends the run at once, without saving).",
      signal.Signals(signum).name,
    )
    if self._jax_notifier:  # JAX's notifier tells every process
      os.kill(os.getpid(), signal.SIGTERM)

  def reached(self, step: int) -> bool:
    """Whether to stop after `step` (with JAX's notifier: the same answer on every process)."""
    if self._jax_notifier:
      if multihost_utils.reached_preemption_sync_point(step):
        self.signum = self.signum or signal.SIGTERM
        return True
      return False
    return self.signum is not None


def _check_finite(metrics: dict, step: int) -> None:
  loss = float(metrics["loss"])
  if not math.isfinite(loss):
    bad = sorted(k for k, v in metrics.items() if not np.all(np.isfinite(v)))
    raise errors.TrainingError(
      f"non-finite loss {loss} at step {step} (non-finite: {', '.join(bad)}); training stopped "
      "and the checkpoints before it are kept. Lower config.train.base_lr or look for bad "
      "inputs, then train in a new --workdir or resume from the last checkpoint."
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

  Raises:
    Interrupted: SIGTERM or SIGINT stopped the run after saving a checkpoint.
    errors.UserError: a config, workdir (another run's, or locked), checkpoint, data or
      non-finite loss problem; the message says what to fix.
  """
  workdir = errors.expand_path(workdir)
  run_config.validate(config)
  # Before anything is written: a workdir of another run is refused and left as it is.
  run_config.check_workdir(workdir, config)
  with run_config.lock_workdir(workdir):
    run_config.check_workdir(workdir, config)  # again: another run may have started meanwhile
    # Rewritten on every start (also when lost): the checkpoints' config agrees with it.
    checkpointing.save_config(workdir, config)
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    manager = checkpointing.create_manager(workdir, config)
    failed = True
    try:
      with StopRequest() as stop:
        results = _train_and_evaluate(config, workdir, writer, manager, stop)
      failed = False
      return results
    finally:
      _close(manager, wait=not failed or _saves_can_finish(manager))


def _saves_can_finish(manager) -> bool:
  """Whether a pending save can still land after an error (not when saving is what failed)."""
  try:
    manager.check_for_errors()
  except Exception:
    return False
  return True


def _close(manager, wait: bool) -> None:
  """Lets the last save land (also when training stopped on an error), so the asynchronous
  checkpointer's threads end here rather than at interpreter exit, where they fail noisily."""
  with checkpointing.quiet():
    try:
      if wait:
        manager.wait_until_finished()
      manager.close()
    except Exception as e:
      logging.warning("Closing the checkpoint manager failed: %s", e)


def jit_train_step(model, config: ml_collections.ConfigDict, mesh):
  """`train_step(state, batch)` jitted on `mesh`: the state replicated (and donated), the batch
  split along its leading axis.

  The jitted function is kept for the process's lifetime per model, mesh and
  `state_lib.state_config(config)`, the entries the step reads, so a second run in the same
  process (a resume, a longer schedule, another workdir) reuses its trace and compiled program.
  Across processes the persistent compilation cache, when one is set, serves the compiled program.
  """
  return _jit_train_step(model, state_lib.state_config(config), mesh)


@functools.lru_cache(maxsize=4)
def _jit_train_step(model, step_config: ml_collections.FrozenConfigDict, mesh):
  replicated = parallel.replicated(mesh)
  return jax.jit(
    functools.partial(train_step, model=model, config=step_config),
    in_shardings=(replicated, parallel.data_sharding(mesh)),
    out_shardings=(replicated, replicated),
    donate_argnums=0,
  )


def _train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  writer: metric_writers.MetricWriter,
  manager,
  stop: StopRequest,
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
  train_model = state_lib.create_model(config, state_lib.train_image_size(config))
  p_train_step = jit_train_step(train_model, config, mesh)
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
  interrupted = None
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
      stopping = not last and stop.reached(step)
      log_now = step % config.train.log_every_steps == 0 or last or stopping
      # A checkpoint is only written after its step's loss has been seen to be finite.
      if log_now or manager.should_save(step):
        history.append(jax.device_get(metrics))
        _check_finite(history[-1], step)
        pending = None
        if log_now:
          writer.write_scalars(step, {f"train/{k}": v for k, v in _mean_metrics(history).items()})
          history = []
      checkpointing.save(manager, step, state, config, force=last or stopping)
      if stopping:  # the evaluation due at this step, if any, is left out
        interrupted = Interrupted(stop.signum, step, str(manager.directory))
        break
      if step % config.train.eval_every_steps == 0 or last:
        with report.timed("eval"):
          results = evaluate.evaluate_variables(
            config, model, state.variables(), eval_data, step=step, workdir=workdir, writer=writer
          )
  if interrupted is not None:
    raise interrupted
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
