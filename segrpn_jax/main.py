"""Entry point: python -m segrpn_jax.main --config=configs/case1.py --workdir=DIR [--mode=eval]."""

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from segrpn_jax import evaluate, train

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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.config.distributed:
    jax.distributed.initialize()
  logging.info(
    "JAX process %d/%d, devices: %s", jax.process_index(), jax.process_count(), jax.devices()
  )
  if FLAGS.mode == "train":
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:
    evaluate.evaluate(FLAGS.config, FLAGS.workdir, step=FLAGS.step)


if __name__ == "__main__":
  app.run(main)
