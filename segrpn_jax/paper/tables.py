"""The paper's Tables I and II: which trainings they need, and their rows from the runs' metrics.

One training per workdir, `ROOT/<training name>`; every row of a table reads one training's final
`metrics_<num_steps>.json`. The "w/o ... during inference" rows need no training of their own:
they are the same run scored with part of its fusion switched off, the per-fusion keys
`inference/<fusion>/mAP50` and `inference/<fusion>/AR@1000` of its metrics. mIoU and mIoU* come
from the segmentation branch, which no RPN fusion touches, so every row of a training shows the
same two numbers.

Only the paper numbers known for sure are printed beside ours; every other paper cell is "n/a".
`segrpn_jax.paper.reproduce` is the command line around these functions.
"""

import csv
import dataclasses
import importlib
import io
import json
import math
import os
import shlex
import subprocess
import sys
from collections.abc import Callable

import tqdm

from segrpn_jax import configs

COLUMNS = ("mIoU", "mIoU*", "mAP", "AR")  # shown as percentages
NOT_REPORTED = "-"  # a finished run without this metric (mIoU*: the baseline has no binary map)
MISSING = "missing"  # the training has not finished (no final metrics file)
UNKNOWN = "n/a"  # the paper value of this cell is not known here


@dataclasses.dataclass(frozen=True)
class Training:
  """One training run of the sweep.

  Attributes:
    name: its workdir under the sweep root, and its name for --rows.
    config_file: the config module in configs/, e.g. 'segrpn.py'.
    fusion: its training (and default inference) fusion; '' for a config without tokens.
  """

  name: str
  config_file: str
  fusion: str

  def config_arg(self, synthetic: bool = False) -> str:
    """The `--config` value relative to the configs folder: FILE[:TOKENS]."""
    tokens = [] if self.fusion == "none" else [self.fusion]
    if synthetic:
      tokens.append("synthetic")
    return self.config_file + (":" + ",".join(tokens) if tokens else "")


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of a table.

  Attributes:
    label: the row's name, the paper's wording.
    training: the Training.name it reads.
    fusion: the inference fusion whose detection metrics it shows.
    paper: the paper's value per column (percent) where it is known.
  """

  label: str
  training: str
  fusion: str
  paper: dict = dataclasses.field(default_factory=dict)


_ROMAN = {1: "I", 2: "II"}
_BASELINE_PAPER = {"mIoU": 67.34, "mAP": 50.38, "AR": 79.58}
_NAMES = {"roi": "ROI", "rpn": "RPN", "roi+rpn": "ROI+RPN"}

TRAININGS = {
  t.name: t
  for t in [
    Training("baseline", "baseline.py", "none"),
    Training("segrpn-roi", "segrpn.py", "roi"),
    Training("segrpn-rpn", "segrpn.py", "rpn"),
    *(
      Training(f"{case}-{fusion}", f"{case}.py", fusion)
      for case in ("case1", "case2", "case3")
      for fusion in ("roi", "rpn", "roi+rpn")
    ),
  ]
}


def _fusion_rows(prefix: str, training: str, fusion: str, paper: dict | None = None) -> list[Row]:
  """A fusion training's row and its "w/o ... during inference" rows (one per fusion part)."""
  rows = [Row(f"{prefix} +{_NAMES[fusion]}", training, fusion, paper or {})]
  if fusion == "roi+rpn":
    without = [("ROI", "rpn"), ("RPN", "roi"), ("ROI+RPN", "none")]
  else:
    without = [(_NAMES[fusion], "none")]
  rows += [Row(f"{prefix} +{_NAMES[fusion]}, w/o {part} during inference", training, inference)
           for part, inference in without]  # fmt: skip
  return rows


TABLES = {
  1: [
    Row("Baseline", "baseline", "none", _BASELINE_PAPER),
    *_fusion_rows("SegRPN", "segrpn-roi", "roi", {"mAP": 51.87}),
    *_fusion_rows("SegRPN", "segrpn-rpn", "rpn"),
  ],
  2: [
    Row("Baseline", "baseline", "none", _BASELINE_PAPER),
    *(
      row
      for case in ("case1", "case2", "case3")
      for fusion in ("roi", "rpn", "roi+rpn")
      for row in _fusion_rows(
        f"Case {case[-1]}",
        f"{case}-{fusion}",
        fusion,
        {"mIoU": 68.52} if (case, fusion) == ("case1", "rpn") else None,
      )
    ),
  ],
}


def _check_table(table: int) -> None:
  if table not in TABLES:
    raise ValueError(f"table {table!r} is not one of the paper's tables; use --table 1 or 2.")


def trainings(table: int, names: list[str] | None = None) -> list[Training]:
  """The trainings a table needs, in row order, optionally restricted to `names`.

  Args:
    table: 1 or 2.
    names: Training.name values to keep (--rows); None = all.

  Returns:
    The Training of every distinct run the table's (kept) rows read.
  """
  _check_table(table)
  needed = list(dict.fromkeys(row.training for row in TABLES[table]))
  if names:
    unknown = sorted(set(names) - set(needed))
    if unknown:
      raise ValueError(
        f"--rows {' '.join(unknown)}: not a training of Table {table}; "
        f"use some of {' '.join(needed)}."
      )
    needed = [n for n in needed if n in names]
  return [TRAININGS[n] for n in needed]


def _configs_dir() -> str:
  """segrpn_jax/configs/ as the commands name it: relative to the working folder when inside it
  (a clone), else absolute (an installed package)."""
  path = os.path.dirname(os.path.abspath(configs.__file__))
  relative = os.path.relpath(path)
  return path if relative.startswith("..") else relative


def command(training: Training, root: str, synthetic: bool = False) -> list[str]:
  """The command line that trains (or resumes) one run.

  Args:
    training: the run.
    root: the sweep root; the run's workdir is root/<training.name>.
    synthetic: append the `synthetic` config token (the CPU quick start).

  Returns:
    argv, starting with 'python' (the caller runs it with its own interpreter).
  """
  config = os.path.join(_configs_dir(), training.config_arg(synthetic))
  return [
    "python",
    "-m",
    "segrpn_jax.main",
    f"--config={config}",
    f"--workdir={os.path.join(root, training.name)}",
  ]


def num_steps(training: Training, root: str, synthetic: bool = False) -> int:
  """The step a finished run ends at: from its workdir's config.json once training has started
  (so that command-line overrides count), else from the config file."""
  config_json = os.path.join(root, training.name, "config.json")
  if os.path.exists(config_json):
    with open(config_json) as f:
      return int(json.load(f)["train"]["num_steps"])
  module = importlib.import_module(f"segrpn_jax.configs.{training.config_file.removesuffix('.py')}")
  arg = training.config_arg(synthetic).partition(":")[2] or None
  return int(module.get_config(arg).train.num_steps)


def final_metrics_path(training: Training, root: str, synthetic: bool = False) -> str:
  """root/<name>/metrics_<num_steps>.json: it exists once the run has finished."""
  step = num_steps(training, root, synthetic)
  return os.path.join(root, training.name, f"metrics_{step}.json")


def is_finished(training: Training, root: str, synthetic: bool = False) -> bool:
  """Whether the run's final metrics file exists."""
  return os.path.exists(final_metrics_path(training, root, synthetic))


def run_trainings(
  table: int,
  root: str,
  synthetic: bool = False,
  names: list[str] | None = None,
  run: Callable = subprocess.run,
) -> list[str]:
  """Trains a table's runs one after the other, each as `python -m segrpn_jax.main` in its own
  process; a finished run is skipped, a killed one resumes from its checkpoints (main does that).

  Each run's output goes to root/<name>/train.log, so the progress bar stays readable.

  Args:
    table: 1 or 2.
    root: the sweep root.
    synthetic: append the `synthetic` config token.
    names: training names (--rows); None = all.
    run: runs one argv (subprocess.run's signature; replaced in tests).

  Returns:
    The names of the trainings that were run (not skipped).

  Raises:
    RuntimeError: when a training exits with an error, naming it and its log.
  """
  ran = []
  todo = trainings(table, names)
  for training in tqdm.tqdm(todo, desc=f"Table {_ROMAN[table]}", unit="run"):
    if is_finished(training, root, synthetic):
      tqdm.tqdm.write(f"{training.name}: finished, skipped")
      continue
    argv = command(training, root, synthetic)
    tqdm.tqdm.write(f"{training.name}: {shlex.join(argv)}")
    workdir = os.path.join(root, training.name)
    os.makedirs(workdir, exist_ok=True)
    log = os.path.join(workdir, "train.log")
    with open(log, "a") as f:
      result = run([sys.executable, *argv[1:]], stdout=f, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
      raise RuntimeError(
        f"training {training.name} failed (exit code {result.returncode}); see {log}. Fix the "
        "cause and rerun the same command: finished runs are skipped, this one resumes."
      )
    ran.append(training.name)
  return ran


def _metric_keys(column: str, fusion: str) -> list[str]:
  """The metrics keys a column reads, in order of preference."""
  if column in ("mIoU", "mIoU*"):
    return [column]
  key = {"mAP": "mAP50", "AR": "AR@1000"}[column]
  return [f"inference/{fusion}/{key}"]


def row_values(row: Row, metrics: dict, training: Training) -> dict:
  """Our percentages of one row from its training's final metrics.

  The row of the training's own fusion may fall back to the top-level mAP50 / AR@1000 (the
  numbers of the run's inference fusion) when the per-fusion key is absent.

  Args:
    row: the row.
    metrics: the run's final metrics (fractions in [0, 1]).
    training: the row's training.

  Returns:
    column -> percent (float, may be nan) or None where the run does not report the metric.
  """
  values = {}
  for column in COLUMNS:
    keys = _metric_keys(column, row.fusion)
    if column in ("mAP", "AR") and row.fusion == training.fusion:
      keys.append({"mAP": "mAP50", "AR": "AR@1000"}[column])
    found = next((metrics[k] for k in keys if k in metrics), None)
    values[column] = None if found is None else 100.0 * float(found)
  return values


def collect(
  table: int, root: str, synthetic: bool = False, names: list[str] | None = None
) -> list[dict]:
  """Every row of a table (restricted to the trainings `names`) from what has finished.

  Args:
    table: 1 or 2.
    root: the sweep root.
    synthetic: whether the runs are the synthetic quick-start configs (their num_steps).
    names: training names (--rows); None = all.

  Returns:
    One dict per row: label, training, fusion, status ('ok' or MISSING), ours (column -> percent
    or None; empty when missing) and paper (column -> percent or None).
  """
  kept = {t.name: t for t in trainings(table, names)}
  metrics_of = {}
  for name, training in kept.items():
    path = final_metrics_path(training, root, synthetic)
    if os.path.exists(path):
      with open(path) as f:
        metrics_of[name] = json.load(f)
  out = []
  for row in TABLES[table]:
    if row.training not in kept:
      continue
    finished = row.training in metrics_of
    out.append(
      {
        "label": row.label,
        "training": row.training,
        "fusion": row.fusion,
        "status": "ok" if finished else MISSING,
        "ours": row_values(row, metrics_of[row.training], kept[row.training]) if finished else {},
        "paper": {c: row.paper.get(c) for c in COLUMNS},
      }
    )
  return out


def _ours(row: dict, column: str) -> str:
  if row["status"] != "ok":
    return MISSING
  value = row["ours"][column]
  if value is None:
    return NOT_REPORTED
  return "nan" if math.isnan(value) else f"{value:.2f}"


def _paper(row: dict, column: str) -> str:
  value = row["paper"][column]
  return UNKNOWN if value is None else f"{value:.2f}"


def to_markdown(rows: list[dict], table: int) -> str:
  """The table as markdown: our percentages, then the paper's, per row.

  Args:
    rows: `collect`'s output.
    table: 1 or 2 (for the title).

  Returns:
    Markdown text with a title, the table and a legend.
  """
  header = ["Row", "Run", *COLUMNS, *(f"paper {c}" for c in COLUMNS)]
  lines = [
    f"# Table {_ROMAN[table]}",
    "",
    "| " + " | ".join(header) + " |",
    "|" + "---|" * len(header),
  ]
  for row in rows:
    cells = [row["label"], row["training"], *(_ours(row, c) for c in COLUMNS)]
    cells += [_paper(row, c) for c in COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  lines += [
    "",
    "Percentages. mAP = mAP50, AR = AR@1000 (class-agnostic proposals, IoU 0.50:0.95) under the "
    "row's inference fusion; mIoU and mIoU* do not depend on the RPN fusion. "
    f"{MISSING}: the run has not finished; {NOT_REPORTED}: the run does not report the metric; "
    f"{UNKNOWN}: the paper's value is not known here.",
  ]
  return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
  """The table as CSV: one line per row, our and the paper's cells as in the markdown."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(
    ["row", "run", "inference_fusion", "status", *COLUMNS, *(f"paper_{c}" for c in COLUMNS)]
  )
  for row in rows:
    writer.writerow(
      [row["label"], row["training"], row["fusion"], row["status"]]
      + [_ours(row, c) for c in COLUMNS]
      + [_paper(row, c) for c in COLUMNS]
    )
  return buffer.getvalue()


def write_table(
  table: int, root: str, synthetic: bool = False, names: list[str] | None = None
) -> str:
  """Collects a table and writes root/table<N>.md and root/table<N>.csv.

  Args:
    table: 1 or 2.
    root: the sweep root.
    synthetic: whether the runs use the synthetic configs.
    names: training names (--rows); None = all.

  Returns:
    The markdown text.
  """
  rows = collect(table, root, synthetic, names)
  markdown = to_markdown(rows, table)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, f"table{table}.md"), "w") as f:
    f.write(markdown)
  with open(os.path.join(root, f"table{table}.csv"), "w") as f:
    f.write(to_csv(rows))
  return markdown
