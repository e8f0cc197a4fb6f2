"""Entry point: python -m segrpn_jax.main --config=configs/case1.py --workdir=DIR [--mode=eval]."""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from segrpn_jax import evaluate, run_config, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config",
  None,
  "Config file, e.g. configs/case1.py or configs/case1.py:roi,synthetic.",
  lock_config=True,
)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, summaries and metrics.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "train (and evaluate) or evaluate only.")
flags.DEFINE_integer("step", None, "With --mode=eval: the checkpoint step (default: latest).")
flags.mark_flags_as_required(["config", "workdir"])


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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  initialize_distributed(FLAGS.config)
  logging.info(
    "JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices()
  )
  if FLAGS.mode == "train":
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:
    # The run's own config, with only evaluation-time keys from the command line; the merged
    # config is validated by evaluate.evaluate.
    config = run_config.for_evaluation(FLAGS.workdir, FLAGS.config)
    evaluate.evaluate(config, FLAGS.workdir, step=FLAGS.step)


if __name__ == "__main__":
  app.run(main)
