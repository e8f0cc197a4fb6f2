"""Reproduces the paper's Table I or II: trains every run it needs, then writes the table.

  python -m segrpn_jax.paper.reproduce --table=1 --root=runs/table1 [--synthetic]
      [--rows=NAME,...] [--seeds=N] [--tokens=TOKEN,...] [--override=KEY=VALUE ...]
      [--dry_run | --collect]

Each training gets its own workdir: seed 0 in ROOT/<name>, seed K in ROOT/<name>-seed<K> (names:
`--dry_run` lists them). It runs as `python -m segrpn_jax.main
--config=segrpn_jax/configs/X.py:TOKENS --workdir=... --config.seed=K [--config.KEY=VALUE]`,
one after the other, all seed-0 runs first; a progress bar counts the trainings. A finished run
(its final metrics_<num_steps>.json exists) is skipped; a killed one resumes from its
checkpoints, so rerunning the same command continues the sweep. The "w/o ... during inference"
rows are read from the same runs. Then ROOT/table<N>.md (ours as mean ± sample std over the
seeds, every paper value beside it, the changes against the baseline), ROOT/table<N>.csv (every
seed's values), ROOT/table<N>_changes.png (the changes, ours with error bars, the paper's as
markers) and the same rows per FPN level, ROOT/table<N>_levels.md (AR50@1000, AR@1000 and AP50
of levels 2..6 as mean ± sample std) and ROOT/table<N>_levels.csv (every seed's values), are
written, and both markdown tables are printed.

Run from the repository root (the commands name the configs relative to it) or anywhere with an
installed package (absolute paths).
"""

import shlex

from absl import flags

from segrpn_jax import errors
from segrpn_jax.paper import tables

FLAGS = flags.FLAGS
flags.DEFINE_integer("table", None, "The paper's table: 1 or 2.")
flags.DEFINE_string("root", None, "Folder holding one workdir per training and seed.")
flags.DEFINE_bool("synthetic", False, "Append the `synthetic` config token: the CPU quick start.")
flags.DEFINE_list("rows", [], "Only these trainings, e.g. --rows=baseline,segrpn-roi.")
flags.DEFINE_integer("seeds", 1, "Trainings per row, config.seed 0..N-1.")
flags.DEFINE_list(
  "tokens", [], "Config tokens appended to every training, e.g. a dataset variant's token."
)
flags.DEFINE_multi_string(
  "override",
  [],
  "KEY=VALUE, repeatable: passed to every training as --config.KEY=VALUE, e.g. "
  "--override=data.eval_split=validation[:2000]. A run keeps the values it started with.",
)
flags.DEFINE_bool("dry_run", False, "Print one command per training and exit.")
flags.DEFINE_bool("collect", False, "Only build the table from what has finished.")
flags.mark_flags_as_required(["table", "root"])


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise errors.UserError(f"unexpected arguments {argv[1:]}; every option is a --flag=value.")
  if FLAGS.dry_run and FLAGS.collect:
    raise errors.UserError("--dry_run and --collect exclude each other; give one of them.")
  table, root, synthetic = FLAGS.table, errors.expand_path(FLAGS.root), FLAGS.synthetic
  names, seeds, tokens = FLAGS.rows or None, FLAGS.seeds, tuple(FLAGS.tokens)
  overrides = tuple(FLAGS.override)
  tables.check_overrides(overrides)
  todo = tables.schedule(table, seeds, names)
  if FLAGS.dry_run:
    for training, seed in todo:
      done = tables.is_finished(training, root, synthetic, seed, tokens)
      prefix = "# finished, would be skipped: " if done else ""
      argv = tables.command(training, root, synthetic, seed, tokens, overrides)
      print(prefix + shlex.join(argv))
    return 0
  if not FLAGS.collect:
    tables.run_trainings(table, root, synthetic, names, seeds, tokens, overrides=overrides)
  markdown = tables.write_table(table, root, synthetic, names, seeds, tokens, with_levels=True)
  print(markdown, end="")
  return 0


if __name__ == "__main__":
  errors.app_run(main)
