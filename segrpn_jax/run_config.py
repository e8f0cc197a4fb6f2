"""A run's config, checked once when the run starts: every problem reported together.

Each check names its config key, the value it found and what would fix it, so that a typo in
one key does not hide a second one behind it, and nothing is built or written before the config
is known to be usable.
"""

from collections.abc import Callable

import jax
import ml_collections

from segrpn_jax import input_pipeline, pretrained
from segrpn_jax.models import resnet
from segrpn_jax.models import rpn as rpn_lib
from segrpn_jax.models.segrpn import DTYPES, resnet_depth
from segrpn_jax.ops import scale


class ConfigError(ValueError):
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
    for key in ("train", "inference"):
      fusion = m.fusion[key]
      if fusion in rpn_lib.FUSIONS and fusion != "none":
        problems.append(
          f"config.model.fusion.{key} = {fusion!r} needs RPN_mask, but "
          "config.model.class_agnostic = False (the baseline); set the fusion to 'none'."
        )
  if m.size_scale <= 0:
    problems.append(f"config.model.size_scale = {m.size_scale} must be > 0.")
  return problems


def _data_problems(config: ml_collections.ConfigDict) -> list[str | None]:
  height, width = config.data.image_size
  problems = []
  if height <= 0 or width <= 0:
    problems.append(f"config.data.image_size = {tuple(config.data.image_size)} must be positive.")
  if config.data.max_instances <= 0:
    problems.append(f"config.data.max_instances = {config.data.max_instances} must be positive.")
  for key in ("train", "eval"):
    batch_size = config[key].batch_size
    try:
      input_pipeline.per_process_batch_size(
        batch_size, f"config.{key}.batch_size", jax.process_count()
      )
    except ValueError as e:
      problems.append(str(e))
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
  problems = _model_problems(config) + _data_problems(config)
  if check_files:
    problems += _file_problems(config)
  problems = [p for p in problems if p]
  if problems:
    raise ConfigError(problems)
