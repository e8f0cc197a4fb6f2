"""Reproduces the paper's Table I or II: trains every run it needs, then writes the table.

  python -m segrpn_jax.paper.reproduce --table 1 --root runs/table1 [--synthetic] [--rows NAME ...]
                              [--dry-run | --collect]

Each training gets its own workdir, ROOT/<name> (names: `--dry-run` lists them), and runs as
`python -m segrpn_jax.main --config=configs/X.py:TOKENS --workdir=ROOT/<name>`, one after the
other. A finished run (its final metrics_<num_steps>.json exists) is skipped; a killed one resumes
from its checkpoints, so rerunning the same command continues the sweep. The "w/o ... during
inference" rows are read from the same runs. Then ROOT/table<N>.md and ROOT/table<N>.csv are
written, with the paper's numbers beside ours where they are known, and the table is printed.

  --synthetic  the CPU quick-start configs (token `synthetic`): synthetic data, small model.
  --rows       only these trainings (e.g. --rows baseline segrpn-roi).
  --dry-run    print each training's command and stop.
  --collect    only build the table from what has finished; unfinished rows say "missing".

Run from the repository root, like the main job.
"""

import argparse
import shlex
import sys

from segrpn_jax.paper import tables


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--table", type=int, choices=sorted(tables.TABLES), required=True)
  parser.add_argument("--root", required=True, help="folder holding one workdir per training")
  parser.add_argument("--synthetic", action="store_true", help="append the synthetic token")
  parser.add_argument("--rows", nargs="+", metavar="NAME", help="only these trainings")
  mode = parser.add_mutually_exclusive_group()
  mode.add_argument("--dry-run", action="store_true", help="print the commands and exit")
  mode.add_argument("--collect", action="store_true", help="only collect finished runs")
  args = parser.parse_args(argv)
  try:
    todo = tables.trainings(args.table, args.rows)
  except ValueError as e:
    parser.error(str(e))
  if args.dry_run:
    for training in todo:
      done = tables.is_finished(training, args.root, args.synthetic)
      prefix = "# finished, would be skipped: " if done else ""
      print(prefix + shlex.join(tables.command(training, args.root, args.synthetic)))
    return 0
  if not args.collect:
    try:
      tables.run_trainings(args.table, args.root, args.synthetic, args.rows)
    except RuntimeError as e:
      print(f"error: {e}", file=sys.stderr)
      return 1
  print(tables.write_table(args.table, args.root, args.synthetic, args.rows), end="")
  return 0


if __name__ == "__main__":
  sys.exit(main())
