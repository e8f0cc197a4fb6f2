"""A run's config, checked once when the run starts: every problem reported together.

Each check names its config key, the value it found and what would fix it, so that a typo in
one key does not hide a second one behind it, and nothing is built or written before the config
is known to be usable.
"""

import contextlib
import difflib
import fcntl
import os
import socket
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from segrpn_jax import checkpointing, errors, input_pipeline, pretrained
from segrpn_jax.models import resnet
from segrpn_jax.models import rpn as rpn_lib
from segrpn_jax.models.segrpn import DTYPES, resnet_depth
from segrpn_jax.ops import scale


class ConfigError(errors.ConfigError):
  """One or more config problems; the message lists each with its key and its fix."""

  def __init__(self, problems: list[str]):
    self.problems = problems
    lines = "\n".join(f"  - {p}" for p in problems)
    super().__init__(f"the config has {len(problems)} problem(s):\n{lines}")


def _one_of(key: str, value, allowed) -> str | None:
  if value not in allowed:
    return f"{key} = {value!r} is not one of {tuple(allowed)}; set {key} to one of them."
  return None


def _model_problems(config: ml_collections.ConfigDict) -> list[str | None]:
  m = config.model
  problems = [
    _one_of("config.model.norm", m.norm, resnet.NORMS),
    _one_of("config.model.dtype", m.dtype, DTYPES),
    _one_of("config.model.scale_case", m.scale_case, scale.CASES),
    _one_of("config.model.fusion.train", m.fusion.train, rpn_lib.FUSIONS),
    _one_of("config.model.fusion.inference", m.fusion.inference, rpn_lib.FUSIONS),
  ]
  try:
    resnet_depth(m.backbone)
  except ValueError as e:
    problems.append(str(e))
  if not m.class_agnostic:
    without = "config.model.class_agnostic = False (the baseline)"
  elif not m.get("rpn_mask", True):
    without = "config.model.rpn_mask = False (SegRPN without RPN_mask)"
  else:
    without = None
  for key in ("train", "inference") if without else ():
    fusion = m.fusion[key]
    if fusion in rpn_lib.FUSIONS and fusion != "none":
      problems.append(
        f"config.model.fusion.{key} = {fusion!r} needs RPN_mask, but {without}; "
        "set the fusion to 'none'."
      )
  if m.size_scale <= 0:
    problems.append(f"config.model.size_scale = {m.size_scale} must be > 0.")
  width = m.get("class_agnostic_channels")
  if width is not None and not width > 0:
    problems.append(
      f"config.model.class_agnostic_channels = {width!r} must be > 0, or None for the FPN's width."
    )
  return problems


def _data_problems(config: ml_collections.ConfigDict) -> list[str | None]:
  height, width = config.data.image_size
  problems = _positive(config, ("data.max_instances", "data.shuffle_buffer", "data.prefetch"))
  if height <= 0 or width <= 0:
    problems.append(f"config.data.image_size = {tuple(config.data.image_size)} must be positive.")
  crop = tuple(config.data.get("train_crop_size") or ())
  if crop and not (
    len(crop) == 2 and all(isinstance(s, int) and s > 0 for s in crop)
    and crop[0] <= height and crop[1] <= width
  ):  # fmt: skip
    problems.append(
      f"config.data.train_crop_size = {crop} must be (height, width), positive and at most "
      f"config.data.image_size = {(height, width)}; or () to train on the whole image."
    )
  for key in ("train", "eval"):
    batch_size = config[key].batch_size
    try:
      input_pipeline.per_process_batch_size(
        batch_size, f"config.{key}.batch_size", jax.process_count()
      )
    except ValueError as e:
      problems.append(str(e))
  return problems


def _positive(config: ml_collections.ConfigDict, keys: tuple[str, ...]) -> list[str | None]:
  problems = []
  for key in keys:
    group, name = key.split(".")
    value = config[group][name]
    if not value > 0:
      problems.append(f"config.{key} = {value!r} must be > 0.")
  return problems


def _train_problems(config: ml_collections.ConfigDict) -> list[str | None]:
  t = config.train
  problems = _positive(
    config,
    ("train.num_steps", "train.base_lr", "train.decay_factor",
     "train.checkpoint_every_steps", "train.keep_checkpoints", "train.eval_every_steps",
     "train.log_every_steps"),
  )  # fmt: skip
  if not 0 <= t.momentum < 1:
    problems.append(f"config.train.momentum = {t.momentum!r} must be in [0, 1) (the paper: 0.9).")
  if t.warmup_start_lr < 0:  # 0 is a warm-up from nothing
    problems.append(f"config.train.warmup_start_lr = {t.warmup_start_lr!r} must be >= 0.")
  if t.weight_decay < 0:
    problems.append(f"config.train.weight_decay = {t.weight_decay!r} must be >= 0.")
  if not 0 <= t.warmup_steps < t.num_steps:
    problems.append(
      f"config.train.warmup_steps = {t.warmup_steps!r} must be in [0, config.train.num_steps = "
      f"{t.num_steps}); shorten the warm-up or lengthen the run."
    )
  decay = tuple(t.decay_steps)
  outside = [s for s in decay if not t.warmup_steps <= s <= t.num_steps]
  if outside:
    problems.append(
      f"config.train.decay_steps = {decay} has {tuple(outside)} outside the run after its "
      f"warm-up [{t.warmup_steps}, {t.num_steps}] (config.train.warmup_steps, num_steps); "
      "move them inside, or set decay_steps = () for no decay."
    )
  elif list(decay) != sorted(set(decay)):
    problems.append(f"config.train.decay_steps = {decay} must increase step by step.")
  return problems


def _eval_problems(config: ml_collections.ConfigDict) -> list[str | None]:
  problems = _positive(config, ("eval.max_proposals",))
  if config.eval.num_image_summaries < 0:
    problems.append(
      f"config.eval.num_image_summaries = {config.eval.num_image_summaries!r} must be >= 0."
    )
  return problems


def _file_problems(config: ml_collections.ConfigDict) -> list[str | None]:
  problems = []
  checks: list[Callable[[], object]] = [
    lambda: pretrained.check_pretrained_file(config),
    lambda: input_pipeline.check_dataset(config),
  ]
  for check in checks:
    try:
      check()
    except (ValueError, FileNotFoundError) as e:
      problems.append(str(e))
  return problems


def validate(config: ml_collections.ConfigDict, check_files: bool = True) -> None:
  """Checks a run's config before anything is built or written.

  Args:
    config: the full config.
    check_files: also check the input files (pretrained weights, dataset / manual_dir).

  Raises:
    ConfigError: listing every problem found, each with its key and what would fix it.
  """
  problems = (
    _model_problems(config)
    + _data_problems(config)
    + _train_problems(config)
    + _eval_problems(config)
  )
  if check_files:
    problems += _file_problems(config)
  problems = [p for p in problems if p]
  if problems:
    raise ConfigError(problems)


# Keys whose change alters what a checkpoint's arrays are (their shapes or what they mean): the
# whole model, and the input the model was trained on. model.pretrained only matters for a fresh
# init, and model.fusion.inference is chosen at inference time. The train group (schedule,
# batch size, seed) is left free: extending num_steps or lowering the rate on resume is usual,
# and neither changes the state's structure (optax's state depends only on the parameters).
STATE_KEYS = ("model", "data.image_size", "data.dataset")
STATE_FREE_KEYS = ("model.pretrained", "model.fusion.inference")
# Keys an evaluation may take from the command line rather than from the run's config.json.
EVAL_KEYS = (
  "data.data_dir",
  "data.manual_dir",
  "data.eval_split",
  "eval",
  "model.fusion.inference",
)
_MISSING = "<missing>"
# Keys a run saved before they existed has, with their value (model.rpn_mask: RPN_mask built;
# model.class_agnostic_channels: the FPN's width).
_IMPLIED = {"model.rpn_mask": True, "model.class_agnostic_channels": None}


class WorkdirError(errors.WorkdirError):
  """A workdir that belongs to another run (the message names each key) or is locked."""


def _flatten(tree: dict, prefix: str = "") -> dict:
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(_flatten(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
  return flat


def _under(key: str, prefixes) -> bool:
  return any(key == p or key.startswith(p + ".") for p in prefixes)


def differences(
  saved: ml_collections.ConfigDict,
  new: ml_collections.ConfigDict,
  keys,
  exclude=(),
) -> list[tuple[str, object, object]]:
  """The leaf keys under `keys` (and not under `exclude`) whose values differ.

  Args:
    saved: a run's config (e.g. read back from config.json; JSON lists compare as tuples).
    new: the config to compare with it.
    keys: dotted key prefixes to compare, e.g. ("model", "data.image_size").
    exclude: dotted key prefixes to skip.

  Returns:
    [(dotted key, saved value, new value)] in key order; a key only one config has shows
    '<missing>' for the other.
  """
  a, b = _flatten(saved.to_dict()), _flatten(new.to_dict())
  for flat in (a, b):  # keys added later, with the value every run saved before them had
    for key, value in _IMPLIED.items():
      flat.setdefault(key, value)
  compared = (
    (key, a.get(key, _MISSING), b.get(key, _MISSING))
    for key in sorted(a.keys() | b.keys())
    if _under(key, keys) and not _under(key, exclude)
  )
  return [(key, x, y) for key, x, y in compared if x != y]


def _listing(diffs) -> str:
  return "\n".join(f"  - config.{k}: {s!r} (saved) vs {n!r} (new)" for k, s, n in diffs)


def _run_config(workdir: str) -> tuple[ml_collections.ConfigDict | None, str]:
  """The config of the run in `workdir` and where it was read: the one its newest checkpoint
  carries (what the checkpoints really are), else config.json, else (None, '')."""
  config = checkpointing.checkpoint_config(workdir)
  if config is not None:
    return (
      config,
      f"the config stored with the checkpoints in {checkpointing.checkpoint_dir(workdir)}",
    )
  path = os.path.join(workdir, checkpointing.CONFIG_FILE)
  if os.path.exists(path):
    return checkpointing.load_config(workdir), path
  return None, ""


def check_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Refuses to train in a workdir whose run has another model, image size or dataset.

  A workdir belongs to one run: its checkpoints only fit the config that wrote them (STATE_KEYS,
  less STATE_FREE_KEYS). The run's config is the one stored with its newest checkpoint, so the
  guard holds when config.json is lost; without checkpoints it is config.json. Writes nothing.

  Args:
    workdir: the run's folder.
    config: the config training is about to start (or resume) with.

  Raises:
    WorkdirError: naming each differing key with its saved and new value, and the fix.
  """
  saved, source = _run_config(workdir)
  if saved is None:
    return
  diffs = differences(saved, config, STATE_KEYS, STATE_FREE_KEYS)
  if diffs:
    raise WorkdirError(
      f"--workdir={workdir} belongs to a run with another config ({source}); its checkpoints "
      f"would not fit this one. {len(diffs)} key(s) differ:\n{_listing(diffs)}\n"
      "Train in a new --workdir, or resume this run with the config it was started with."
    )


LOCK_FILE = "lock"


@contextlib.contextmanager
def lock_workdir(workdir: str) -> Iterator[None]:
  """Holds workdir/lock (an exclusive `flock`) for the duration of a training run.

  The first thing a run writes: it creates the workdir and the lock file and notes its host and
  PID in it. The kernel frees the lock when its holder ends, however it ends, so a killed run
  never blocks the next. A multi-process run takes it on process 0 only; every process learns
  whether it got it. (flock is per machine: on a network file system shared by several
  machines it may not exclude a run on another one.)

  Raises:
    WorkdirError: another running process holds the lock (named by host and PID), or the
      workdir cannot be created.
  """
  holder = None
  fd = None
  if jax.process_index() == 0:
    path = os.path.join(workdir, LOCK_FILE)
    try:
      os.makedirs(workdir, exist_ok=True)
      fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(
        f"--workdir={workdir} cannot be created or written: {type(e).__name__}: "
        f"{e.strerror or e}. Choose a folder you can write to."
      ) from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown (starting)"
      os.close(fd)
      fd = None
    else:
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"host {socket.gethostname()}, PID {os.getpid()}\n".encode(), 0)
  if jax.process_count() > 1:
    held = np.asarray(holder is None, np.int32)
    if not int(multihost_utils.broadcast_one_to_all(held)):
      holder = holder or "another run (found by process 0)"
  try:
    if holder is not None:
      raise WorkdirError(
        f"--workdir={workdir} is in use by another run ({holder}; lock file "
        f"{os.path.join(workdir, LOCK_FILE)}). Wait for it to end or stop it, or train in a "
        "new --workdir."
      )
    yield
  finally:
    if fd is not None:
      os.close(fd)  # releases the lock


def closest_keys(config: ml_collections.ConfigDict, key: str, n: int = 3) -> list[str]:
  """The existing config keys (dotted, without 'config.') nearest to `key` by spelling, first
  among the keys of the same group."""
  names = list(_flatten(config.to_dict()))
  names += sorted({".".join(k.split(".")[:i]) for k in names for i in range(1, k.count(".") + 1)})
  parent = key.rpartition(".")[0]
  siblings = [k for k in names if k.rpartition(".")[0] == parent]
  leaf = key.rpartition(".")[2]
  near = [f"{parent}.{m}" if parent else m for m in difflib.get_close_matches(
    leaf, [k.rpartition(".")[2] for k in siblings], n, cutoff=0.5)]  # fmt: skip
  near += [k for k in difflib.get_close_matches(key, names, n, cutoff=0.6) if k not in near]
  return near[:n]


def unknown_key_message(config: ml_collections.ConfigDict, key: str, source: str) -> str:
  """The one-line report of an override of a key `config` does not have."""
  near = closest_keys(config, key)
  hint = (
    f"the closest existing: {', '.join('config.' + k for k in near)}"
    if near
    else "no key is close to it"
  )
  return f"config.{key} is not a key of the config ({source}); {hint}. Fix the key's name."


def for_evaluation(
  workdir: str, cli_config: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
  """The config to evaluate the run in `workdir` with: the run's own, plus evaluation-time keys.

  The run's config.json is the base. From `cli_config` only EVAL_KEYS are taken (data_dir,
  manual_dir, eval_split, the eval group, model.fusion.inference). A model key (other than
  model.pretrained, which only matters for a fresh init), the image size or the dataset that
  differs from the run's is refused (the checkpoint would not fit, or the
  numbers would not be the run's). Every other differing key (e.g. train.num_steps of a run
  started with an override) is taken from the run's config silently; keys the run's config
  lacks (written by an older version) come from `cli_config`. Reads only; writes nothing.

  Args:
    workdir: the training run's folder (holds config.json).
    cli_config: the config given on the command line.

  Returns:
    The merged config (a new ConfigDict); check it with `validate` before use.

  Raises:
    FileNotFoundError: workdir/config.json does not exist.
    WorkdirError: naming each refused key with both values, and the fix.
  """
  saved = checkpointing.load_config(workdir)
  diffs = differences(saved, cli_config, STATE_KEYS, STATE_FREE_KEYS + EVAL_KEYS)
  diffs = [d for d in diffs if d[1] != _MISSING]
  if diffs:
    raise WorkdirError(
      f"--mode=eval: the config differs from the run's own "
      f"({os.path.join(workdir, checkpointing.CONFIG_FILE)}) in {len(diffs)} key(s) that "
      f"evaluation cannot change:\n{_listing(diffs)}\n"
      "Evaluate with the run's config (drop these overrides); only "
      f"{', '.join('config.' + k for k in EVAL_KEYS)} may differ."
    )
  merged = saved.to_dict()
  saved_keys = _flatten(merged).keys()
  for key, value in _flatten(cli_config.to_dict()).items():
    if _under(key, EVAL_KEYS) or key not in saved_keys:
      node = merged
      *parents, leaf = key.split(".")
      for name in parents:
        node = node.setdefault(name, {})
      node[leaf] = value
  return ml_collections.ConfigDict(merged)
