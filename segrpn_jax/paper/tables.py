"""The paper's Tables I and II: which trainings they need, every published value, and our rows
from the runs' metrics, over one or more seeds.

One training per workdir: seed 0 in `ROOT/<training name>`, seed K > 0 in
`ROOT/<training name>-seed<K>` (trained with `--config.seed=K`). Every row of a table reads each
seed's final `metrics_<num_steps>.json`. The "w/o ... during inference" rows need no training of
their own: they are the same runs scored with part of their fusion switched off, the per-fusion
keys `inference/<fusion>/...` of the metrics. mIoU and mIoU* come from the segmentation branch,
which no RPN fusion touches, so every row of a training shows the same two numbers.

Every paper cell of both tables is typed here from the paper (Cityscapes val, percent), beside
ours. Ours are the mean ± sample standard deviation over the finished seeds. The paper's
"Prop. AR at 1000" does not say over which IoUs it averages; it sits beside our AR50@1000 (see
`AR_NOTE`), with COCO's AR@1000 (IoU 0.50:0.95) shown too. Each row also shows its change against
the Baseline row, ours and the paper's, and `plot_changes` draws those changes. The same rows
per FPN level (AR50, AR and AP50 of levels 2..6, ours only: the paper has no per-level values)
go to a second table, `to_levels_markdown`. `segrpn_jax.paper.reproduce` is the command line
around these functions.
"""

import csv
import dataclasses
import importlib
import io
import json
import math
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import tqdm
from matplotlib.figure import Figure

from segrpn_jax import configs, errors

# Our columns (percent) and the metrics key each reads.
COLUMNS = ("mIoU", "mIoU*", "mAP", "AR50", "AR")
_KEYS = {"mIoU": "mIoU", "mIoU*": "mIoU*", "mAP": "mAP50", "AR50": "AR50@1000", "AR": "AR@1000"}
DETECTION = ("mAP", "AR50", "AR")  # the columns that depend on the inference fusion
DELTAS = ("mAP", "AR50", "AR")  # our columns with a change vs the baseline
PAPER_DELTAS = ("mAP", "AR")  # the paper's columns with a change vs its baseline
# The paper's AR column sits beside this one of ours (AR_NOTE says why).
PAPER_AR_BESIDE = "AR50"
# The per-level table: FPN levels P2..P6 (segrpn_jax.ops.scale.MIN_LEVEL..MAX_LEVEL, not imported:
# it would import jax) and its metrics, name -> the metrics key before '/L<level>' ({p}: the
# run's config.eval.max_proposals).
LEVELS = (2, 3, 4, 5, 6)
LEVEL_METRICS = {"AR50": "AR50@{p}", "AR": "AR@{p}", "AP50": "AP50"}
_LEVEL_KEYS = tuple((name, level) for name in LEVEL_METRICS for level in LEVELS)
DEFAULT_MAX_PROPOSALS = 1000  # config.eval.max_proposals of every paper config

NOT_REPORTED = "-"  # a finished run without this metric (mIoU*: the baseline has no binary map)
MISSING = "missing"  # no seed of the training has finished (no final metrics file)
PAPER_NA = "NA"  # the paper prints "NA" (Table I, the baseline's mIoU*)

AR_NOTE = (
  'The paper\'s "Prop. AR" (proposal average recall at 1000 proposals per image) sits beside our '
  "AR50@1000, the class-agnostic recall of 1000 proposals at IoU 0.5: the paper does not say over "
  "which IoUs it averages, and its values (78.86 to 83.34 on Cityscapes val, 79.58 for the "
  "baseline) read like recall at IoU 0.5 more than like COCO's average over IoU 0.50:0.05:0.95, "
  "which also asks for tight boxes. This reading is our choice; AR = AR@1000 (IoU 0.50:0.95, "
  "COCO's AR) is shown as well."
)
CASE1_NOTE = (
  "The paper lists nine labels for case 1 but eight rows of values: the label "
  '"Baseline + ROI_1 + RPN_1 (w/o RPN_1 during inference)" appears twice. The eight rows of '
  "values belong to the first eight labels, in order; the repeated ninth label, without values, "
  "is left out."
)


@dataclasses.dataclass(frozen=True)
class Training:
  """One training run of the sweep (seed 0; `workdir` names the others).

  Attributes:
    name: its workdir under the sweep root, and its name for --rows.
    config_file: the config module in segrpn_jax/configs/, e.g. 'segrpn.py'.
    fusion: its training (and default inference) fusion; 'none' for the baseline.
    setting: config tokens of the setting itself, before the fusion (e.g. 'no_rpn_mask').
  """

  name: str
  config_file: str
  fusion: str
  setting: tuple[str, ...] = ()

  def config_arg(self, synthetic: bool = False, tokens: tuple[str, ...] = ()) -> str:
    """The `--config` value relative to the configs folder: FILE[:TOKENS].

    Args:
      synthetic: append the `synthetic` token.
      tokens: further config tokens, appended after the fusion and `synthetic`.
    """
    parts = list(self.setting) + ([] if self.fusion == "none" else [self.fusion])
    parts += ["synthetic"] if synthetic else []
    parts += [t for t in tokens if t]
    return self.config_file + (":" + ",".join(parts) if parts else "")

  def workdir(self, root: str, seed: int = 0) -> str:
    """root/<name> for seed 0, root/<name>-seed<K> for seed K."""
    return os.path.join(root, self.name if seed == 0 else f"{self.name}-seed{seed}")


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of a table.

  Attributes:
    label: the row's name, the paper's wording.
    training: the Training.name it reads.
    fusion: the inference fusion whose detection metrics it shows.
    paper: the paper's value per paper column (percent); None where the paper prints "NA".
  """

  label: str
  training: str
  fusion: str
  paper: dict


_ROMAN = {1: "I", 2: "II"}
# The paper's columns of each table, in its order ("AR" is its "Prop. AR").
PAPER_COLUMNS = {1: ("mIoU", "mIoU*", "mAP", "AR"), 2: ("mIoU", "mAP", "AR")}

TRAININGS = {
  t.name: t
  for t in [
    Training("baseline", "baseline.py", "none"),
    Training("segrpn-roi", "segrpn.py", "roi"),
    Training("segrpn-rpn", "segrpn.py", "rpn"),
    Training("case1-roi", "case1.py", "roi"),
    Training("case1-rpn", "case1.py", "rpn"),
    Training("case1-roi+rpn", "case1.py", "roi+rpn"),
    *(
      Training(f"{case}-{fusion}", f"{case}.py", fusion)
      for case in ("case2", "case3")
      for fusion in ("roi", "rpn")
    ),
  ]
}
# Trainings no table row reads, run by name with --rows (with either table): the paper's Fig. 5
# network, SegRPN without RPN_mask (python -m segrpn_jax.paper.figures --figure=missed-objects).
EXTRA_TRAININGS = {
  t.name: t for t in [Training("segrpn-no-rpn-mask", "segrpn.py", "none", ("no_rpn_mask",))]
}
TRAININGS.update(EXTRA_TRAININGS)


def _rows(table: int, typed: list[tuple]) -> list[Row]:
  """Rows from (label, training, inference fusion, *paper values in PAPER_COLUMNS order)."""
  return [
    Row(label, training, fusion, dict(zip(PAPER_COLUMNS[table], values, strict=True)))
    for label, training, fusion, *values in typed
  ]


# Table I of the paper: mIoU, mIoU*, mAP, Prop. AR (None: "NA" in the paper).
TABLES = {
  1: _rows(1, [
    ("Baseline", "baseline", "none", 67.34, None, 50.38, 79.58),
    ("Baseline + ROI", "segrpn-roi", "roi", 67.80, 94.41, 51.87, 80.22),
    ("Baseline + ROI (w/o ROI during inference)", "segrpn-roi", "none",
     67.80, 94.41, 51.65, 79.77),
    ("Baseline + RPN", "segrpn-rpn", "rpn", 67.95, 94.40, 51.45, 80.40),
    ("Baseline + RPN (w/o RPN during inference)", "segrpn-rpn", "none",
     67.95, 94.40, 50.85, 79.40),
  ]),
  # Table II of the paper: mIoU, mAP, Prop. AR; subscripts written as _k.
  2: _rows(2, [
    ("Baseline", "baseline", "none", 67.34, 50.38, 79.58),
    ("Baseline + ROI_1", "case1-roi", "roi", 67.89, 51.42, 80.56),
    ("Baseline + ROI_1 (w/o ROI_1 during inference)", "case1-roi", "none", 67.89, 51.25, 79.95),
    ("Baseline + RPN_1", "case1-rpn", "rpn", 68.52, 51.57, 82.59),
    ("Baseline + RPN_1 (w/o RPN_1 during inference)", "case1-rpn", "none", 67.95, 50.84, 78.86),
    ("Baseline + ROI_1 + RPN_1", "case1-roi+rpn", "roi+rpn", 68.18, 51.40, 83.34),
    ("Baseline + ROI_1 + RPN_1 (w/o ROI_1 and RPN_1 during inference)", "case1-roi+rpn", "none",
     68.18, 49.93, 79.02),
    ("Baseline + ROI_1 + RPN_1 (w/o ROI_1 during inference)", "case1-roi+rpn", "rpn",
     68.18, 51.20, 82.72),
    ("Baseline + ROI_1 + RPN_1 (w/o RPN_1 during inference)", "case1-roi+rpn", "roi",
     68.18, 50.30, 79.90),
    ("Baseline + ROI_2", "case2-roi", "roi", 68.33, 51.50, 80.70),
    ("Baseline + ROI_2 (w/o ROI_2 during inference)", "case2-roi", "none", 68.33, 51.28, 79.84),
    ("Baseline + RPN_2", "case2-rpn", "rpn", 68.23, 51.71, 82.54),
    ("Baseline + RPN_2 (w/o RPN_2 during inference)", "case2-rpn", "none", 68.23, 50.17, 79.84),
    ("Baseline + ROI_3", "case3-roi", "roi", 68.24, 51.21, 80.55),
    ("Baseline + ROI_3 (w/o ROI_3 during inference)", "case3-roi", "none", 68.24, 51.13, 80.29),
    ("Baseline + RPN_3", "case3-rpn", "rpn", 68.43, 51.56, 82.84),
    ("Baseline + RPN_3 (w/o RPN_3 during inference)", "case3-rpn", "none", 68.43, 50.43, 79.64),
  ]),
}  # fmt: skip
BASELINE = "baseline"  # the training of both tables' first row, the reference of the changes


def _check_table(table: int) -> None:
  if table not in TABLES:
    raise errors.UserError(f"--table={table!r} is not one of the paper's tables; use 1 or 2.")


def trainings(table: int, names: list[str] | None = None) -> list[Training]:
  """The trainings a table needs, in row order, optionally restricted to `names`.

  Args:
    table: 1 or 2.
    names: Training.name values to keep (--rows); None = all.

  Returns:
    The Training of every distinct run the table's (kept) rows read, and the EXTRA_TRAININGS
    named in `names`.

  Raises:
    UserError: a name that is neither a training of the table nor of EXTRA_TRAININGS.
  """
  _check_table(table)
  needed = list(dict.fromkeys(row.training for row in TABLES[table]))
  if names:
    known = needed + list(EXTRA_TRAININGS)
    unknown = sorted(set(names) - set(known))
    if unknown:
      raise errors.UserError(
        f"--rows={','.join(unknown)}: not a training of Table {table}; "
        f"use some of {','.join(known)}."
      )
    needed = [n for n in known if n in names]
  return [TRAININGS[n] for n in needed]


def _configs_dir() -> str:
  """segrpn_jax/configs/ as the commands name it: relative to the working folder when inside it
  (a clone), else absolute (an installed package)."""
  path = os.path.dirname(os.path.abspath(configs.__file__))
  relative = os.path.relpath(path)
  return path if relative.startswith("..") else relative


def command(
  training: Training,
  root: str,
  synthetic: bool = False,
  seed: int = 0,
  tokens: tuple[str, ...] = (),
  overrides: tuple[str, ...] = (),
) -> list[str]:
  """The command line that trains (or resumes) one run.

  Args:
    training: the run.
    root: the sweep root.
    synthetic: append the `synthetic` config token (the CPU quick start).
    seed: config.seed, and the workdir (`Training.workdir`).
    tokens: further config tokens for every run (e.g. a dataset variant).
    overrides: KEY=VALUE config overrides for every run, passed as --config.KEY=VALUE.

  Returns:
    argv, starting with 'python' (the caller runs it with its own interpreter).
  """
  config = os.path.join(_configs_dir(), training.config_arg(synthetic, tokens))
  return [
    "python",
    "-m",
    "segrpn_jax.main",
    f"--config={config}",
    f"--workdir={training.workdir(root, seed)}",
    f"--config.seed={seed}",
    *(f"--config.{override}" for override in overrides),
  ]


def check_overrides(overrides: tuple[str, ...]) -> None:
  """Fails on an override that is not KEY=VALUE with KEY a dotted config key (no `seed`: the
  sweep sets it per run)."""
  for override in overrides:
    key, eq, _ = override.partition("=")
    if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
      raise errors.UserError(
        f"--override={override!r} is not KEY=VALUE with a dotted config key; write e.g. "
        "--override=data.eval_split=validation[:2000]."
      )
    if key == "seed":
      raise errors.UserError(
        f"--override={override!r}: the sweep sets config.seed per run; use --seeds=N instead."
      )


def _config_value(training: Training, root: str, synthetic, seed: int, tokens, key: str):
  """One value of a run's config, `key` dotted (e.g. 'train.num_steps'): from its workdir's
  config.json once training has started (so that command-line overrides count) when it holds the
  key, else from the config file with the same tokens."""
  config_json = os.path.join(training.workdir(root, seed), "config.json")
  if os.path.exists(config_json):
    with open(config_json) as f:
      saved = json.load(f)
    for part in key.split("."):
      saved = saved.get(part) if isinstance(saved, dict) else None
    if saved is not None:
      return saved
  module = importlib.import_module(f"segrpn_jax.configs.{training.config_file.removesuffix('.py')}")
  arg = training.config_arg(synthetic, tokens).partition(":")[2] or None
  try:
    config = module.get_config(arg)
  except ValueError as e:
    raise errors.ConfigError(
      f"{e} (the config of training {training.name}, {training.config_arg(synthetic, tokens)}); "
      "check --tokens."
    ) from e
  for part in key.split("."):
    config = config[part]
  return config


def num_steps(
  training: Training, root: str, synthetic: bool = False, seed: int = 0, tokens=()
) -> int:
  """The step a finished run ends at: its config's train.num_steps (`_config_value`)."""
  return int(_config_value(training, root, synthetic, seed, tokens, "train.num_steps"))


def max_proposals(
  training: Training, root: str, synthetic: bool = False, seed: int = 0, tokens=()
) -> int:
  """The proposals per image its AR keys count (AR50@<P>): its config's eval.max_proposals."""
  return int(_config_value(training, root, synthetic, seed, tokens, "eval.max_proposals"))


def final_metrics_path(
  training: Training, root: str, synthetic: bool = False, seed: int = 0, tokens=()
) -> str:
  """<workdir>/metrics_<num_steps>.json: it exists once the run has finished."""
  step = num_steps(training, root, synthetic, seed, tokens)
  return os.path.join(training.workdir(root, seed), f"metrics_{step}.json")


def is_finished(
  training: Training, root: str, synthetic: bool = False, seed: int = 0, tokens=()
) -> bool:
  """Whether the run's final metrics file exists."""
  if not os.path.isdir(training.workdir(root, seed)):
    return False
  return os.path.exists(final_metrics_path(training, root, synthetic, seed, tokens))


def schedule(table: int, seeds: int = 1, names: list[str] | None = None):
  """Every (training, seed) of a sweep, seed by seed: all seed-0 runs first, so that a table of
  one seed exists early."""
  if seeds < 1:
    raise errors.UserError(f"--seeds={seeds}: a sweep needs at least 1 seed.")
  todo = trainings(table, names)
  return [(training, seed) for seed in range(seeds) for training in todo]


def run_trainings(
  table: int,
  root: str,
  synthetic: bool = False,
  names: list[str] | None = None,
  seeds: int = 1,
  tokens: tuple[str, ...] = (),
  run: Callable = subprocess.run,
  overrides: tuple[str, ...] = (),
) -> list[str]:
  """Trains a table's runs one after the other, each as `python -m segrpn_jax.main` in its own
  process; a finished run is skipped, a killed one resumes from its checkpoints (main does that).

  Each run's output goes to <workdir>/train.log; a progress bar counts the trainings (done /
  total, elapsed, ETA).

  Args:
    table: 1 or 2.
    root: the sweep root.
    synthetic: append the `synthetic` config token.
    names: training names (--rows); None = all.
    seeds: runs per training, config.seed 0..seeds-1.
    tokens: further config tokens for every run.
    run: runs one argv (subprocess.run's signature; replaced in tests).
    overrides: KEY=VALUE config overrides for every run (`command`).

  Returns:
    The workdir names (relative to root) of the trainings that were run (not skipped).

  Raises:
    TrainingError: when a training exits with an error, naming it and its log.
  """
  check_overrides(overrides)
  todo = schedule(table, seeds, names)
  finished = [is_finished(t, root, synthetic, s, tokens) for t, s in todo]
  ran = []
  with tqdm.tqdm(
    total=len(todo), initial=sum(finished), desc=f"Table {_ROMAN[table]}", unit="run"
  ) as bar:
    for (training, seed), done in zip(todo, finished, strict=True):
      workdir = training.workdir(root, seed)
      name = os.path.basename(workdir)
      if done:
        tqdm.tqdm.write(f"{name}: finished, skipped")
        continue
      argv = command(training, root, synthetic, seed, tokens, overrides)
      tqdm.tqdm.write(f"{name}: {shlex.join(argv)}")
      os.makedirs(workdir, exist_ok=True)
      log = os.path.join(workdir, "train.log")
      with open(log, "a") as f:
        result = run([sys.executable, *argv[1:]], stdout=f, stderr=subprocess.STDOUT, check=False)
      if result.returncode != 0:
        raise errors.TrainingError(
          f"training {name} failed (exit code {result.returncode}); see {log}. Fix the cause "
          "and rerun the same command: finished runs are skipped, this one resumes."
        )
      ran.append(name)
      bar.update(1)
  return ran


def row_values(row: Row, metrics: dict, training: Training) -> dict:
  """Our percentages of one row from one run's final metrics.

  The row of the training's own fusion may fall back to the unprefixed keys (the numbers of the
  run's inference fusion) when the per-fusion key is absent.

  Args:
    row: the row.
    metrics: the run's final metrics (fractions in [0, 1]).
    training: the row's training.

  Returns:
    column -> percent (float, may be nan) or None where the run does not report the metric.
  """
  return {
    c: _percent(metrics, _fusion_keys(row, training, _KEYS[c]) if c in DETECTION else [_KEYS[c]])
    for c in COLUMNS
  }


def level_values(row: Row, metrics: dict, training: Training, proposals: int) -> dict:
  """Our per-level percentages of one row from one run's final metrics, read as `row_values`
  reads the detection columns (the row's fusion, else the unprefixed key for the training's own
  fusion).

  Args:
    row: the row.
    metrics: the run's final metrics (fractions in [0, 1]).
    training: the row's training.
    proposals: the run's config.eval.max_proposals (the P of AR50@<P>/L<l>).

  Returns:
    (LEVEL_METRICS name, level) -> percent (float, may be nan) or None where the run has no
    key (a level without ground truth in the split).
  """
  return {
    (name, level): _percent(
      metrics, _fusion_keys(row, training, f"{key.format(p=proposals)}/L{level}")
    )
    for name, key in LEVEL_METRICS.items()
    for level in LEVELS
  }


def _fusion_keys(row: Row, training: Training, key: str) -> list[str]:
  """The keys a row reads a detection metric from, in order: its inference fusion's, then for
  the row of the training's own fusion the unprefixed key (the numbers of the run's inference
  fusion)."""
  return [f"inference/{row.fusion}/{key}"] + ([key] if row.fusion == training.fusion else [])


def _percent(metrics: dict, keys: list[str]):
  """100 x the first of `keys` in the metrics, None when none is."""
  found = next((metrics[k] for k in keys if k in metrics), None)
  return None if found is None else 100.0 * float(found)


def _finished_seeds(training: Training, root: str, synthetic, seeds: int, tokens) -> dict:
  """seed -> final metrics of every finished seed in 0..seeds-1 and any further one on disk."""
  on_disk = set()
  if os.path.isdir(root):
    prefix = f"{training.name}-seed"
    for entry in os.listdir(root):
      if entry.startswith(prefix) and entry[len(prefix) :].isdigit():
        on_disk.add(int(entry[len(prefix) :]))
  out = {}
  for seed in sorted(set(range(seeds)) | on_disk):
    if is_finished(training, root, synthetic, seed, tokens):
      with open(final_metrics_path(training, root, synthetic, seed, tokens)) as f:
        out[seed] = json.load(f)
  return out


def _stats(values: list) -> tuple:
  """(mean, sample std, n) of per-seed percentages; mean None when a seed lacks the metric,
  std nan with one seed."""
  if not values or any(v is None for v in values):
    return None, math.nan, len(values)
  std = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
  return float(np.mean(values)), std, len(values)


def collect(
  table: int,
  root: str,
  synthetic: bool = False,
  names: list[str] | None = None,
  seeds: int = 1,
  tokens: tuple[str, ...] = (),
) -> list[dict]:
  """Every row of a table (restricted to the trainings `names`) from what has finished.

  Args:
    table: 1 or 2.
    root: the sweep root.
    synthetic: whether the runs are the synthetic quick-start configs (their num_steps).
    names: training names (--rows); None = all.
    seeds: the seeds asked for (further finished seeds on disk count too).
    tokens: the runs' further config tokens (their num_steps).

  Returns:
    One dict per row: label, training, fusion, status ('ok' once a seed has finished, else
    MISSING), seeds (seed -> column -> percent or None), n (finished seeds), wanted (seeds
    asked for), mean / std (column -> percent), delta (column -> our mean minus the baseline
    row's mean, DELTAS), delta_se (its standard error, sqrt(s_row^2 / n_row + s_base^2 /
    n_base): nan with one seed on either side), paper (paper column -> percent or None for
    "NA") and paper_delta (PAPER_DELTAS -> the paper's row minus its baseline). Per level:
    level_seeds (seed -> (LEVEL_METRICS name, level) -> percent or None, `level_values`),
    level_mean / level_std ((name, level) -> percent) and proposals (seed -> its
    config.eval.max_proposals, the P of its AR keys).
  """
  kept = {t.name: t for t in trainings(table, names)}
  needed = {**kept, BASELINE: TRAININGS[BASELINE]}  # the changes need the baseline
  runs = {name: _finished_seeds(t, root, synthetic, seeds, tokens) for name, t in needed.items()}
  proposals = {
    name: {seed: max_proposals(TRAININGS[name], root, synthetic, seed, tokens) for seed in seeds_}
    for name, seeds_ in runs.items()
  }
  out = []
  for row in TABLES[table]:  # the Baseline row first
    if row.training not in needed:
      continue
    per_seed = {
      seed: row_values(row, metrics, TRAININGS[row.training])
      for seed, metrics in runs[row.training].items()
    }
    stats = {c: _stats([v[c] for v in per_seed.values()]) for c in COLUMNS}
    level_seeds = {
      seed: level_values(row, metrics, TRAININGS[row.training], proposals[row.training][seed])
      for seed, metrics in runs[row.training].items()
    }
    level_stats = {k: _stats([v[k] for v in level_seeds.values()]) for k in _LEVEL_KEYS}
    out.append({
      "label": row.label, "training": row.training, "fusion": row.fusion,
      "status": "ok" if per_seed else MISSING, "seeds": per_seed, "n": len(per_seed),
      "wanted": seeds, "mean": {c: s[0] for c, s in stats.items()},
      "std": {c: s[1] for c, s in stats.items()}, "paper": dict(row.paper),
      "level_seeds": level_seeds, "level_mean": {k: s[0] for k, s in level_stats.items()},
      "level_std": {k: s[1] for k, s in level_stats.items()},
      "proposals": dict(proposals[row.training]),
    })  # fmt: skip
  base = out[0]
  for r in out:
    r["delta"], r["delta_se"] = {}, {}
    for c in DELTAS:
      ours, ref = r["mean"][c], base["mean"][c]
      r["delta"][c] = None if ours is None or ref is None else ours - ref
      se = math.sqrt(r["std"][c] ** 2 / max(r["n"], 1) + base["std"][c] ** 2 / max(base["n"], 1))
      r["delta_se"][c] = se
    r["paper_delta"] = {c: r["paper"][c] - base["paper"][c] for c in PAPER_DELTAS}
  return [r for r in out if r["training"] in kept]


def _number(value, signed: bool = False, digits: int = 2) -> str:
  if value is None:
    return NOT_REPORTED
  if math.isnan(value):
    return "nan"
  return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _mean_std(row: dict, mean, std, digits: int = 2) -> str:
  """Our cell: mean ± sample std (several seeds) or the one seed's value."""
  if row["status"] != "ok":
    return MISSING
  if mean is None or math.isnan(std):
    return _number(mean, digits=digits)
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _ours(row: dict, column: str) -> str:
  return _mean_std(row, row["mean"][column], row["std"][column])


def _delta(row: dict, column: str) -> str:
  if row["status"] != "ok":
    return MISSING
  return _number(row["delta"][column], signed=True)


def _paper(value) -> str:
  return PAPER_NA if value is None else f"{value:.2f}"


def _n(row: dict) -> str:
  return str(row["n"]) if row["n"] >= row["wanted"] else f"{row['n']}/{row['wanted']}"


def _layout(table: int) -> list[tuple[str, Callable[[dict], str]]]:
  """The markdown table's columns, (header, cell of a row): each of ours, then the paper's
  beside it where the paper has that column (its Prop. AR beside our AR50); then the changes
  against the baseline likewise."""
  paper = PAPER_COLUMNS[table]
  beside = {PAPER_AR_BESIDE: "AR", **{c: c for c in paper if c != "AR"}}
  columns = []
  for c in COLUMNS:
    columns.append((c, lambda r, c=c: _ours(r, c)))
    if c in beside:
      columns.append((f"paper {beside[c]}", lambda r, p=beside[c]: _paper(r["paper"][p])))
  for c in DELTAS:
    columns.append((f"Δ{c}", lambda r, c=c: _delta(r, c)))
    if beside.get(c) in PAPER_DELTAS:
      p = beside[c]
      columns.append((f"paper Δ{p}", lambda r, p=p: _number(r["paper_delta"][p], signed=True)))
  return columns


def _markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
  """The lines of a markdown table: the header, its rule, a line per row of cells."""
  lines = ["| " + " | ".join(cells) + " |" for cells in [header, *body]]
  return [lines[0], "|" + "---|" * len(header), *lines[1:]]


def to_markdown(rows: list[dict], table: int) -> str:
  """The table as markdown: per row ours (mean ± std over n seeds) with the paper's value
  beside each, then the changes against the baseline, ours and the paper's.

  Args:
    rows: `collect`'s output.
    table: 1 or 2 (for the title and the paper's columns).

  Returns:
    Markdown text with a title, the table and its footnotes.
  """
  layout = _layout(table)
  header = ["Row", "Run", "n", *(h for h, _ in layout)]
  body = [
    [row["label"], row["training"], _n(row), *(cell(row) for _, cell in layout)] for row in rows
  ]
  lines = [f"# Table {_ROMAN[table]}", "", *_markdown_table(header, body)]
  lines += [
    "",
    "Percentages on the validation split; the paper's are Cityscapes val. Ours: mean ± sample "
    "standard deviation over the n finished seeds (one value when n = 1; n = k/N: k of the N "
    "seeds asked for have finished). mAP = mAP50 (8 classes), AR50 = AR50@1000, AR = AR@1000 "
    "(class-agnostic proposals), under the row's inference fusion; mIoU and mIoU* do not depend "
    "on the RPN fusion. Δ: the row minus the Baseline row (ours: of the means). "
    f"{MISSING}: no seed of the run has finished; {NOT_REPORTED}: the run does not report the "
    f'metric; {PAPER_NA}: the paper prints "NA".',
    "",
    AR_NOTE,
  ]
  if table == 2:
    lines += ["", CASE1_NOTE]
  return "\n".join(lines) + "\n"


_LEVEL_TITLES = {
  "AR50": "recall of the proposals at IoU 0.5",
  "AR": "recall of the proposals averaged over IoU 0.50:0.05:0.95",
  "AP50": "box AP at IoU 0.5, 8 classes",
}


def to_levels_markdown(rows: list[dict], table: int) -> str:
  """The table's rows per FPN level: for AR50@P, AR@P and AP50 (P = config.eval.max_proposals,
  1000 in every paper config) one markdown table each, a line per row of the table, per level
  L2..L6 ours as mean ± sample std over the n finished seeds, in percent with one decimal.

  Args:
    rows: `collect`'s output.
    table: 1 or 2 (for the title).

  Returns:
    Markdown text with a title, the three tables and a footnote.
  """
  found = sorted({p for row in rows for p in row["proposals"].values()})
  found = found or [DEFAULT_MAX_PROPOSALS]
  p = "/".join(map(str, found))
  header = ["Row", "Run", "Fusion", "n", *(f"L{level}" for level in LEVELS)]
  lines = [f"# Table {_ROMAN[table]} per FPN level"]
  for name, key in LEVEL_METRICS.items():
    body = [
      [row["label"], row["training"], row["fusion"], _n(row)]
      + [
        _mean_std(row, row["level_mean"][name, level], row["level_std"][name, level], digits=1)
        for level in LEVELS
      ]
      for row in rows
    ]
    lines += ["", f"## {key.format(p=p)}: {_LEVEL_TITLES[name]}", ""]
    lines += _markdown_table(header, body)
  lines += [
    "",
    "Percentages on the validation split, ours only: the paper reports no per-level values. "
    "Ours: mean ± sample standard deviation over the n finished seeds (one value when n = 1; "
    "n = k/N: k of the N seeds asked for have finished), under the row's inference fusion "
    "(Fusion), from the metrics keys `inference/<fusion>/AR50@<P>/L<l>` etc. (P = the run's "
    "config.eval.max_proposals). Level l: the ground truth whose box side falls in level l's "
    "range of the run's scale case (case1's for the scale case `none`), as COCO area ranges. "
    f"{MISSING}: no seed of the run has finished; {NOT_REPORTED}: a finished seed has no key for "
    "the level (no ground truth of its sizes in the split).",
  ]
  return "\n".join(lines) + "\n"


def to_csv(rows: list[dict], table: int) -> str:
  """The table as CSV, one line per row and seed (a missing row: one line, seed empty): each
  seed's values, then the paper's cells of the row."""
  paper = PAPER_COLUMNS[table]
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(
    ["row", "run", "inference_fusion", "seed", "status", *COLUMNS, *(f"paper_{c}" for c in paper)]
  )
  for row in rows:
    papers = [_paper(row["paper"][c]) for c in paper]
    if row["status"] != "ok":
      writer.writerow([row["label"], row["training"], row["fusion"], "", MISSING]
                      + [MISSING] * len(COLUMNS) + papers)  # fmt: skip
    for seed, values in row["seeds"].items():
      writer.writerow(
        [row["label"], row["training"], row["fusion"], seed, "ok"]
        + [NOT_REPORTED if values[c] is None else repr(values[c]) for c in COLUMNS]
        + papers
      )
  return buffer.getvalue()


def to_levels_csv(rows: list[dict]) -> str:
  """The per-level values as CSV, one line per row and seed (a missing row: one line, seed
  empty): the seed's config.eval.max_proposals, then per LEVEL_METRICS name and level its
  percent, column '<name>/L<level>'."""
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  level_columns = [f"{name}/L{level}" for name, level in _LEVEL_KEYS]
  writer.writerow(
    ["row", "run", "inference_fusion", "seed", "status", "max_proposals", *level_columns]
  )
  for row in rows:
    if row["status"] != "ok":
      writer.writerow([row["label"], row["training"], row["fusion"], "", MISSING, MISSING]
                      + [MISSING] * len(level_columns))  # fmt: skip
    for seed, values in row["level_seeds"].items():
      writer.writerow(
        [row["label"], row["training"], row["fusion"], seed, "ok", row["proposals"][seed]]
        + [NOT_REPORTED if values[k] is None else repr(values[k]) for k in _LEVEL_KEYS]
      )
  return buffer.getvalue()


# The changes `plot_changes` draws: (our column, its name, the paper column beside it or None).
PLOTTED = (("mAP", "mAP50", "mAP"), ("AR50", "AR50@1000", "AR"), ("AR", "AR@1000", None))


def plot_changes(rows: list[dict], table: int, path: str) -> None:
  """Writes a PNG: per row (the Baseline left out), its change against the Baseline row in
  mAP50, AR50@1000 and AR@1000 (one panel each), ours as the mean with the standard error of
  the difference as error bars, the paper's as a marker (its Prop. AR beside AR50@1000).

  Changes, not absolute values: the paper's absolutes are Cityscapes', ours may not be.
  """
  shown = [r for r in rows if r["training"] != BASELINE]
  height = 1.2 + 0.32 * max(len(shown), 1)
  figure = Figure(figsize=(13, height), layout="constrained")
  axes = figure.subplots(1, len(PLOTTED), sharey=True)
  y = np.arange(len(shown))[::-1]
  for ax, (column, name, paper_column) in zip(axes, PLOTTED, strict=True):
    ours = np.array([np.nan if r["delta"][column] is None else r["delta"][column] for r in shown])
    se = np.array([r["delta_se"][column] for r in shown])
    ax.axvline(0.0, color="0.6", linewidth=1)
    ax.errorbar(ours, y, xerr=np.nan_to_num(se), fmt="o", color="tab:blue", capsize=3,
                label="ours (mean ± s.e.)")  # fmt: skip
    if paper_column is not None:
      paper = [r["paper_delta"][paper_column] for r in shown]
      ax.plot(paper, y, "D", color="tab:red", markerfacecolor="none", label="paper")
    ax.set_title(f"Δ{name} vs baseline" + (" (paper: Prop. AR)" if column == "AR50" else ""))
    ax.set_xlabel("change (points)")
    ax.grid(axis="x", color="0.9")
  axes[0].set_yticks(y, [r["label"] for r in shown], fontsize=8)
  axes[0].legend(loc="best", fontsize=8)
  n = sorted({r["n"] for r in rows if r["status"] == "ok"})
  figure.suptitle(f"Table {_ROMAN[table]}: change against the Baseline row (seeds per row: "
                  f"{', '.join(map(str, n)) or 'none finished'})")  # fmt: skip
  figure.savefig(path, dpi=110)


def write_table(
  table: int,
  root: str,
  synthetic: bool = False,
  names: list[str] | None = None,
  seeds: int = 1,
  tokens: tuple[str, ...] = (),
  with_levels: bool = False,
) -> str:
  """Collects a table and writes root/table<N>.md, root/table<N>.csv, the change plot
  root/table<N>_changes.png, and the same rows per FPN level: root/table<N>_levels.md
  (`to_levels_markdown`) and root/table<N>_levels.csv (every seed's values, `to_levels_csv`).

  Args:
    table: 1 or 2.
    root: the sweep root.
    synthetic: whether the runs use the synthetic configs.
    names: training names (--rows); None = all.
    seeds: the seeds asked for.
    tokens: the runs' further config tokens.
    with_levels: also return the per-level markdown (what `reproduce` prints).

  Returns:
    The text of table<N>.md; with_levels: followed by an empty line and the text of
    table<N>_levels.md.
  """
  rows = collect(table, root, synthetic, names, seeds, tokens)
  markdown = to_markdown(rows, table)
  levels = to_levels_markdown(rows, table)
  os.makedirs(root, exist_ok=True)
  for suffix, text in [
    (".md", markdown),
    (".csv", to_csv(rows, table)),
    ("_levels.md", levels),
    ("_levels.csv", to_levels_csv(rows)),
  ]:
    with open(os.path.join(root, f"table{table}{suffix}"), "w") as f:
      f.write(text)
  plot_changes(rows, table, os.path.join(root, f"table{table}_changes.png"))
  return markdown + "\n" + levels if with_levels else markdown
