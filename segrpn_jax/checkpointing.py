"""Orbax checkpoints of the train state: save every N steps and at the end, keep the last K,
restore the latest on start so a killed run continues where it stopped."""

import json
import os

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

CONFIG_FILE = "config.json"
# The item name Orbax gives the one unnamed item of a CheckpointManager.
_ITEM = "default"


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
  return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager: ocp.CheckpointManager, step: int, state, force: bool = False) -> bool:
  """Saves `state` at `step` when the interval says so (or `force`); returns whether it did."""
  return manager.save(step, args=ocp.args.StandardSave(state), force=force)


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be restored; the message names the workdir, the step and why."""


class MismatchError(CheckpointError):
  """A checkpoint whose arrays do not fit the state of today's config (another model)."""


def _key_name(key) -> str:
  return str(getattr(key, "name", getattr(key, "key", getattr(key, "idx", key))))


def _shapes(tree) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Leaf path (names only, so a dataclass attribute and a dict key compare equal) -> shape."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {tuple(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def _first_mismatch(step_dir: str, abstract_state) -> str | None:
  """The first variable whose saved shape differs from `abstract_state`'s, read from the
  checkpoint's metadata; None when they agree or the metadata itself cannot be read."""
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      metadata = checkpointer.metadata(os.path.join(step_dir, _ITEM))
    saved = _shapes(getattr(metadata, "item_metadata", metadata))
  except Exception:  # unreadable metadata: a damaged checkpoint, not another model
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
    MismatchError: the checkpoint's shapes or variables differ from `abstract_state`'s.
    CheckpointError: the checkpoint's files cannot be read (damaged, truncated, missing).
  """
  step_dir = os.path.join(str(manager.directory), str(step))
  try:
    return manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
  except Exception as e:  # Orbax/TensorStore raise plain Exception for unreadable data
    mismatch = _first_mismatch(step_dir, abstract_state)
    if mismatch is not None:
      raise MismatchError(
        f"the checkpoint of step {step} in {step_dir} does not fit the model of this config: "
        f"{mismatch}. It was written by a run with another model config; restore it with that "
        "run's config (its config.json) or train in a new --workdir."
      ) from None
    # TensorStore appends its whole spec ("See full TensorStore details: ..."); keep the cause.
    cause = (str(e).strip().splitlines() or [""])[0].split(" See full TensorStore")[0]
    raise CheckpointError(
      f"the checkpoint of step {step} in {step_dir} cannot be read: {type(e).__name__}: "
      f"{cause[:300]}"
    ) from None


def restore(manager: ocp.CheckpointManager, abstract_state, step: int | None = None):
  """Restores a state shaped and sharded like `abstract_state` (a tree of ShapeDtypeStructs).

  For the latest checkpoint (step None) a damaged newest step costs one checkpoint interval:
  it is logged as a warning and the step before it is tried, down to the oldest one kept. A
  checkpoint of another model is an error at once (every step of the run would fail alike).

  Args:
    manager: the run's manager.
    abstract_state: `jax.eval_shape` of the state, with `.sharding` set on each leaf.
    step: which step; None = the latest one that can be read.

  Returns:
    (state, step), or (None, None) when the folder holds no checkpoint.

  Raises:
    FileNotFoundError: `step` is not among the saved steps.
    MismatchError: the checkpoint does not fit `abstract_state` (another model config).
    CheckpointError: the requested `step`, or with step None every saved step, cannot be read.
  """
  steps = sorted(manager.all_steps(), reverse=True)
  if step is not None:
    if step not in steps:
      raise FileNotFoundError(
        f"no checkpoint for step {step} in {manager.directory}; have {sorted(steps)}."
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
      logging.warning("%s; trying the checkpoint before it.", e)
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
  """Reads the config written by `save_config`; names the file when it is missing."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} the workdir of a training run?")
  with open(path) as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))


def _tuples(tree):
  """JSON turns tuples into lists; the config's sequences are tuples (hashable, static)."""
  if isinstance(tree, dict):
    return {key: _tuples(value) for key, value in tree.items()}
  if isinstance(tree, list):
    return tuple(_tuples(value) for value in tree)
  return tree


def set_aside_newer(manager: ocp.CheckpointManager, workdir: str, step: int) -> list[int]:
  """Moves the checkpoints newer than `step` (ones `restore` found damaged) out of the way.

  They go to workdir/damaged_checkpoints/<step> (kept for inspection, not deleted), so that
  the resumed run can save those steps again. Process 0 moves them; every process then waits.

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
    target = os.path.join(os.path.abspath(workdir), "damaged_checkpoints")
    os.makedirs(target, exist_ok=True)
    for s in newer:
      os.replace(os.path.join(str(manager.directory), str(s)), os.path.join(target, str(s)))
    logging.warning("Moved the damaged checkpoints of steps %s to %s.", newer, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("segrpn_jax: damaged checkpoints moved")
  manager.reload()
  return newer
