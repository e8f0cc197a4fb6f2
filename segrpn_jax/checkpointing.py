"""Orbax checkpoints of the train state: save every N steps and at the end, keep the last K,
restore the latest intact one on start so a killed run continues where it stopped.

Each step folder also carries the run's config (in Orbax's `_CHECKPOINT_METADATA`, key
`custom_metadata.config`), so a workdir whose config.json is lost still knows its run.
A damaged step (missing files, unreadable metadata, truncated data) costs one interval: the
newest intact step is restored and the damaged ones are moved to workdir/damaged_checkpoints.
"""

import contextlib
import gc
import json
import logging as py_logging
import os
import re
import sys
import tempfile
import traceback

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from segrpn_jax import errors

CONFIG_FILE = "config.json"
DAMAGED_DIR = "damaged_checkpoints"
# The item name Orbax gives the one unnamed item of a CheckpointManager.
_ITEM = "default"
# Orbax's per-step metadata file (JSON); our config goes under custom_metadata.config.
_STEP_METADATA = "_CHECKPOINT_METADATA"


class CheckpointError(errors.CheckpointError):
  """A checkpoint that cannot be restored or written; the message names the folder and why."""


class MismatchError(CheckpointError):
  """A readable checkpoint whose arrays do not fit the state of this config (another model)."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def create_manager(workdir: str, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
  """A CheckpointManager in `workdir/checkpoints` with the train group's interval and keep-K.

  Args:
    workdir: the run's folder.
    config: the full config (reads train.checkpoint_every_steps and train.keep_checkpoints).

  Returns:
    The manager. `save(step, ...)` only writes on multiples of checkpoint_every_steps unless forced.
  """
  options = ocp.CheckpointManagerOptions(
    save_interval_steps=config.train.checkpoint_every_steps,
    max_to_keep=config.train.keep_checkpoints,
    create=True,
  )
  with quiet():
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


# The coroutine of Orbax's array reads; when one read of a damaged step fails, its siblings
# fail after the restore has given up, and nobody retrieves their exceptions.
_ORBAX_READ = "_read_array_index_and_device_put"


# TensorStore's error for a read of a damaged OCDBT file. It reaches asyncio as the exception of
# a plain Future, set from TensorStore's thread: it carries no Python traceback to recognise.
_TENSORSTORE_READ_ERROR = re.compile(r"Error reading .* in OCDBT database")


def _is_orbax_read_report(text: str, exc: BaseException | None) -> bool:
  if exc is not None and exc.__traceback__ is None and _TENSORSTORE_READ_ERROR.search(str(exc)):
    return True
  while exc is not None:
    frames = traceback.extract_tb(exc.__traceback__)
    if any(frame.name == _ORBAX_READ for frame in frames):
      return True
    exc = exc.__cause__ or exc.__context__
  return _ORBAX_READ in text


class _OrbaxReadFilter(py_logging.Filter):
  """Drops asyncio's "exception was never retrieved" reports of Orbax's read tasks."""

  def filter(self, record: py_logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not _is_orbax_read_report(record.getMessage(), exc)


def _drop_orbax_read_reports() -> None:
  """Keeps the reports of Orbax's failed read tasks (asyncio's log, Python's unraisable-exception
  hook) out of the output for the rest of the process; every other report passes. Idempotent."""
  asyncio_logger = py_logging.getLogger("asyncio")
  if not any(isinstance(f, _OrbaxReadFilter) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_OrbaxReadFilter())
  previous = sys.unraisablehook
  if getattr(previous, "drops_orbax_reads", False):
    return

  def hook(unraisable) -> None:
    if not _is_orbax_read_report(repr(unraisable.object), unraisable.exc_value):
      previous(unraisable)

  hook.drops_orbax_reads = True
  sys.unraisablehook = hook


@contextlib.contextmanager
def quiet():
  """Orbax's and asyncio's reports of a failed read, kept out of the log.

  A restore that fails leaves Orbax warnings ("Metadata file does not exist"), asyncio futures
  whose exception nobody retrieved and coroutines that were never awaited. They are collected
  here (gc) while asyncio's logger, absl's warnings and Python's unraisable-exception hook are
  muted, so the one line `restore` logs per damaged step is all that is printed. Orbax's read
  tasks that are still running then end later (at exit at the latest); `_drop_orbax_read_reports`
  keeps their reports out of the log too.
  """
  _drop_orbax_read_reports()
  absl_logger = py_logging.getLogger("absl")
  asyncio_logger = py_logging.getLogger("asyncio")
  levels = absl_logger.level, asyncio_logger.level
  hook = sys.unraisablehook
  absl_logger.setLevel(py_logging.ERROR)
  asyncio_logger.setLevel(py_logging.CRITICAL + 1)
  sys.unraisablehook = lambda _: None
  try:
    yield
  finally:
    gc.collect()  # reports of unretrieved futures are made when they are collected: here
    sys.unraisablehook = hook
    absl_logger.setLevel(levels[0])
    asyncio_logger.setLevel(levels[1])


def _json_config(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def _check_writable(folder: str, step: int) -> None:
  """Fails at once when `folder` cannot take a file, before Orbax's asynchronous save does
  (its error would surface one interval later, after a 300 s barrier timeout)."""
  try:
    os.makedirs(folder, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write_probe_", dir=folder)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise CheckpointError(
      f"cannot write the checkpoint of step {step} into {folder}: {type(e).__name__}: "
      f"{e.strerror or e}. Make the folder writable (or free space on its disk) and run the "
      "same command again; the checkpoints saved before are intact and it resumes from them."
    ) from None


def save(
  manager: ocp.CheckpointManager,
  step: int,
  state,
  config: ml_collections.ConfigDict | None = None,
  force: bool = False,
) -> bool:
  """Saves `state` (and `config` beside it) at `step` when the interval says so (or `force`).

  Args:
    manager: the run's manager.
    step: the step just trained.
    state: the train state.
    config: the run's config, stored in the step's metadata (read back by `checkpoint_config`).
    force: save even off the interval.

  Returns:
    Whether a checkpoint was started (it is written asynchronously).

  Raises:
    CheckpointError: the checkpoints folder cannot be written, or the previous asynchronous
      save failed; the message names the folder and the cause.
  """
  if not (force or manager.should_save(step)):
    return False
  folder = str(manager.directory)
  _check_writable(folder, step)
  metadata = None if config is None else {"config": _json_config(config)}
  try:
    return manager.save(step, args=ocp.args.StandardSave(state), force=force,
                        custom_metadata=metadata)  # fmt: skip
  except Exception as e:  # the previous save's error surfaces here (Orbax raises plain errors)
    raise CheckpointError(
      f"saving the checkpoint of step {step} into {folder} failed: {type(e).__name__}: "
      f"{_first_line(e)}. The checkpoints saved before are intact; fix the cause and run the "
      "same command again to resume from them."
    ) from None


def _first_line(e: BaseException) -> str:
  # TensorStore appends its whole spec ("See full TensorStore details: ..."); keep the cause.
  return (str(e).strip().splitlines() or [""])[0].split(" See full TensorStore")[0][:300]


def checkpoint_config(workdir: str) -> ml_collections.ConfigDict | None:
  """The config stored with the newest checkpoint that has one, or None.

  Read straight from each step's `_CHECKPOINT_METADATA` (JSON), newest first; a step whose
  metadata is missing or unreadable is skipped.
  """
  folder = checkpoint_dir(workdir)
  steps = sorted((int(s) for s in _listdir(folder) if s.isdigit()), reverse=True)
  for step in steps:
    try:
      with open(os.path.join(folder, str(step), _STEP_METADATA)) as f:
        config = json.load(f)["custom_metadata"]["config"]
    except (OSError, ValueError, KeyError, TypeError):
      continue
    if isinstance(config, dict):
      return ml_collections.ConfigDict(_tuples(config))
  return None


def _listdir(folder: str) -> list[str]:
  try:
    return os.listdir(folder)
  except OSError:
    return []


def _key_name(key) -> str:
  return str(getattr(key, "name", getattr(key, "key", getattr(key, "idx", key))))


def _shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Leaf path (names only, so a dataclass attribute and a dict key compare equal) -> shape."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def _first_mismatch(step_dir: str, abstract_state) -> str | None:
  """The first variable whose saved shape differs from `abstract_state`'s, read from the
  checkpoint's metadata; None when they agree or the metadata cannot be read or is empty (a
  damaged checkpoint, not another model)."""
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      metadata = checkpointer.metadata(os.path.join(step_dir, _ITEM))
    saved = _shapes(getattr(metadata, "item_metadata", metadata))
  except Exception:  # unreadable metadata: a damaged checkpoint
    return None
  if not saved:  # emptied or missing _METADATA reads as an empty tree
    return None
  wanted = _shapes(abstract_state)
  # The state's own order (step, params, ...) first: a parameter names the cause best.
  for path in [*wanted, *(p for p in saved if p not in wanted)]:
    name = "/".join(path)
    if path not in saved:
      return f"{name} of shape {wanted[path]} is not in the checkpoint"
    if path not in wanted:
      return f"the checkpoint holds {name} of shape {saved[path]}, which this model has not"
    if saved[path] != wanted[path]:
      return f"{name} has shape {saved[path]} in the checkpoint but {wanted[path]} in this model"
  return None


def _restore_step(manager: ocp.CheckpointManager, abstract_state, step: int):
  """One step's state; a failure becomes one CheckpointError, cause first, without Orbax's trace.

  Raises:
    MismatchError: the checkpoint is readable and its variables or shapes differ.
    CheckpointError: the checkpoint's files cannot be read (damaged, truncated, missing).
  """
  step_dir = os.path.join(str(manager.directory), str(step))
  with quiet():
    try:
      return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
    except Exception as e:  # Orbax/TensorStore raise plain Exception for unreadable data
      error, mismatch = e, _first_mismatch(step_dir, abstract_state)
  if mismatch is not None:
    raise MismatchError(
      f"the checkpoint of step {step} in {step_dir} does not fit the model of this config: "
      f"{mismatch}. It was written by a run with another model config; restore it with that "
      "run's config (its config.json) or train in a new --workdir."
    )
  raise CheckpointError(
    f"the checkpoint of step {step} in {step_dir} cannot be read: {type(error).__name__}: "
    f"{_first_line(error)}"
  )


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores a state shaped and sharded like `abstract_state` (a tree of ShapeDtypeStructs).

  For the latest checkpoint (step None) a damaged step costs one checkpoint interval: one
  warning line names it and its cause, and the step before it is tried, down to the oldest one
  kept. A readable checkpoint of another model is an error at once (every step of the run
  would fail alike).

  Args:
    manager: the run's manager.
    abstract_state: `jax.eval_shape` of the state, with `.sharding` set on each leaf.
    step: which step; None = the latest one that can be read.

  Returns:
    (state, step), or (None, None) when the folder holds no checkpoint.

  Raises:
    errors.InputFileError: `step` is not among the saved steps.
    MismatchError: the checkpoint does not fit `abstract_state` (another model config).
    CheckpointError: the requested `step`, or with step None every saved step, cannot be read.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if step is not None:
    if step not in steps:
      raise errors.InputFileError(
        f"no checkpoint of step {step} in {manager.directory}: it holds steps {sorted(steps)}. "
        "Pass one of them (--step), or leave --step out for the latest."
      )
    return _restore_step(manager, abstract_state, step), step
  if not steps:
    return None, None
  failures = []
  for candidate in steps:
    try:
      return _restore_step(manager, abstract_state, candidate), candidate
    except MismatchError:
      raise
    except CheckpointError as e:
      failures.append(str(e))
      logging.warning("%s; trying the step before it.", e)
  raise CheckpointError(
    f"no checkpoint in {manager.directory} can be restored (steps {sorted(steps)}):\n  - "
    + "\n  - ".join(failures)
    + "\nMove the damaged step folders away to start afresh, or train in a new --workdir."
  )


def save_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes the run's config next to its checkpoints (read back by `api.load`)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, CONFIG_FILE)
    # Written aside and renamed: other processes may read it at the same time (check_workdir).
    with open(path + ".tmp", "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    os.replace(path + ".tmp", path)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config: workdir/config.json, or when that is lost the one its newest checkpoint
  carries. Names the workdir when it has neither."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    config = checkpoint_config(workdir)
    if config is not None:
      return config
    raise errors.InputFileError(
      f"{path} not found and no checkpoint carries a config: is {workdir!r} the --workdir of a "
      "training run?"
    )
  try:
    with open(path) as f:
      return ml_collections.ConfigDict(_tuples(json.load(f)))
  except ValueError as e:
    raise errors.WorkdirError(
      f"{path} cannot be read: {e}. Delete it: training rewrites it from the checkpoints' config."
    ) from None


def _tuples(tree):
  """JSON turns tuples into lists; the config's sequences are tuples (hashable, static)."""
  if isinstance(tree, dict):
    return {key: _tuples(value) for key, value in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(value) for value in tree)
  return tree


def set_aside_newer(manager: ocp.CheckpointManager, workdir: str, step: int) -> list[int]:
  """Moves the checkpoints newer than `step` (ones `restore` found damaged) out of the way.

  They go to workdir/damaged_checkpoints/<step> (kept for inspection, not deleted; a second
  damaged copy of a step becomes <step>.1, ...), so that the resumed run can save those steps
  again. Process 0 moves them; every process then waits.

  Args:
    manager: the run's manager.
    workdir: the run's folder.
    step: the step that was restored.

  Returns:
    The steps moved.
  """
  newer = sorted(s for s in manager.all_steps() if s > step)
  if not newer:
    return []
  if jax.process_index() == 0:
    target = os.path.join(os.path.abspath(workdir), DAMAGED_DIR)
    os.makedirs(target, exist_ok=True)
    for s in newer:
      name, n = str(s), 0
      while os.path.exists(os.path.join(target, name)):
        n += 1
        name = f"{s}.{n}"
      dest = os.path.join(target, name)
      os.replace(os.path.join(str(manager.directory), str(s)), dest)
      logging.info("Moved the damaged checkpoint of step %d to %s.", s, dest)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("segrpn_jax: damaged checkpoints moved")
  manager.reload()
  return newer
