"""Entry point: python -m segrpn_jax.main --config=configs/case1.py --workdir=DIR [--mode=eval].

With --mode=eval, --config is optional: the run's own config is read from its workdir.

Exit statuses: 0 done; 2 a problem the one printed block explains (errors.EXIT_USER_ERROR);
128 + the signal's number (143 for SIGTERM, 130 for SIGINT) when a signal stopped training
after saving its checkpoint (the same command resumes); 1 a bug, with its traceback.
"""

import os
import re
import shlex
import sys

import jax
from absl import flags, logging
from ml_collections import config_flags

from segrpn_jax import checkpointing, errors, evaluate, run_config, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config",
  None,
  "Config file, e.g. configs/case1.py or configs/case1.py:roi,synthetic "
  "(with --mode=eval: default the run's own config).",
  lock_config=True,
)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, summaries and metrics.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (and evaluate) or evaluate only.")
flags.DEFINE_integer("step", None, "With --mode=eval: the checkpoint step (default: latest).")
flags.DEFINE_string(
  "compilation_cache_dir",
  None,
  "JAX's persistent compilation cache: a rerun of the same config, another seed of it and its "
  "evaluation load their compiled programs from here instead of compiling again. Default "
  "$JAX_COMPILATION_CACHE_DIR, else ~/.cache/segrpn_jax/xla; an empty value turns it off.",
)
flags.mark_flags_as_required(["workdir"])

DEFAULT_COMPILATION_CACHE = "~/.cache/segrpn_jax/xla"


def _config_argument(argv: list[str]) -> str | None:
  """The value of the last --config flag in `argv` (--config=X or --config X)."""
  value = None
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      value = arg.split("=", 1)[1]
    elif arg == "--config" and i + 1 < len(argv):
      value = argv[i + 1]
  return value


def _overrides(argv: list[str]) -> list[str]:
  """The dotted keys of the --config.<key>=value overrides in `argv`."""
  keys = []
  for arg in argv:
    if arg.startswith("--config."):
      keys.append(arg[len("--config.") :].split("=", 1)[0])
  return keys


def _innermost(e: BaseException) -> BaseException:
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  return e


def _unknown_override(argv: list[str], source: str) -> str | None:
  """The report of the first --config.<key> override that names no key of the config file."""
  try:
    config = config_flags.config_flags._ConfigFileParser(name="config").parse(source)
  except Exception:
    return None
  for key in _overrides(argv):
    node = config
    for name in key.split("."):
      if not hasattr(node, "keys") or name not in node:
        return run_config.unknown_key_message(config, key, source)
      node = node[name]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a bad --config (a missing file, an unknown token or key, a value
  of the wrong type) or another bad flag raised as one UserError naming the flag and the fix."""
  source = _config_argument(argv)
  if source is not None and not os.path.isfile(errors.expand_path(source.split(":", 1)[0])):
    raise errors.InputFileError(
      f"--config={source}: the config file {source.split(':', 1)[0]} does not exist; give the "
      "path of a config file, e.g. configs/case1.py (or configs/case1.py:synthetic)."
    )
  try:
    return FLAGS(argv)
  except Exception as e:
    unknown = _unknown_override(argv, source) if source is not None else None
    if unknown is not None:
      raise errors.ConfigError(unknown) from e
    cause = str(_innermost(e)).strip()
    flag = re.match(r"flag (--\S+): ", str(e))  # "flag --name=value: why"
    if flag is not None:
      message = f"{flag.group(1)}: {cause}"
    else:
      message = f"{cause} (--helpshort lists the flags)"
    raise errors.ConfigError(message) from e


def initialize_distributed(config) -> None:
  """Joins the processes of a distributed run (config.distributed) through jax.distributed.

  Only the cluster keys that are set (config.coordinator_address, num_processes, process_id)
  are passed; the others are left to JAX's detection from the environment.
  """
  if not config.distributed:
    return
  # Cross-process collectives on CPU need an implementation; the setting only affects the CPU
  # backend and must be made before initialize, when the backend is not yet known.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  cluster = {
    key: config[key]
    for key in ("coordinator_address", "num_processes", "process_id")
    if config[key] is not None
  }
  jax.distributed.initialize(**cluster)


def use_compilation_cache(flag_value: str | None) -> str | None:
  """Points JAX's persistent compilation cache at the --compilation_cache_dir folder (see the
  flag); returns the folder, or None when the cache is off. Programs that compile in under a
  second are not stored (JAX's default threshold)."""
  folder = flag_value
  if folder is None:
    folder = os.environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_COMPILATION_CACHE
  if not folder:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  folder = errors.expand_path(folder)
  jax.config.update("jax_compilation_cache_dir", folder)
  return folder


def main(argv) -> int:
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments {argv[1:]}: every option is a --flag=value.")
  workdir = errors.expand_path(FLAGS.workdir)
  if FLAGS.mode == "train":
    if FLAGS.config is None:
      raise errors.ConfigError(
        "--config is needed with --mode=train: e.g. --config=configs/case1.py:synthetic."
      )
    config = FLAGS.config
  elif FLAGS.config is None:  # the run's own config
    config = checkpointing.load_config(workdir)
  else:
    # The run's own config, with only evaluation-time keys from the command line; the merged
    # config is validated by evaluate.evaluate.
    config = run_config.for_evaluation(workdir, FLAGS.config)
  initialize_distributed(config)
  cache = use_compilation_cache(FLAGS.compilation_cache_dir)
  logging.info("Compilation cache: %s", cache or "off")
  logging.info(
    "JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices()
  )
  if FLAGS.mode == "eval":
    evaluate.evaluate(config, workdir, step=FLAGS.step)
    return 0
  try:
    train.train_and_evaluate(config, workdir)
  except train.Interrupted as e:
    command = shlex.join([sys.executable, "-m", "segrpn_jax.main", *sys.argv[1:]])
    sys.stderr.write(f"{e} Resume: {command}\n")
    sys.stderr.flush()
    return e.exit_status
  return 0


if __name__ == "__main__":
  errors.app_run(main, flags_parser=parse_flags)
