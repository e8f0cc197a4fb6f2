"""segrpn_jax.paper.reproduce and segrpn_jax.paper.tables: the paper's values cell by cell, the
commands of the sweep over seeds, which runs it skips, and the tables, CSV and change plot built
from hand-written metrics files (some runs missing)."""

import csv
import io
import itertools
import json
import math
import os
import subprocess
import sys
import types

import pytest
from PIL import Image

from segrpn_jax import errors
from segrpn_jax.ops import scale
from segrpn_jax.paper import tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Typed from the paper (Cityscapes val), independently of tables.py: label, then the values.
# Table I: mIoU, mIoU*, mAP, Prop. AR.
PAPER_TABLE_1 = [
  ("Baseline", "67.34", "NA", "50.38", "79.58"),
  ("Baseline + ROI", "67.80", "94.41", "51.87", "80.22"),
  ("Baseline + ROI (w/o ROI during inference)", "67.80", "94.41", "51.65", "79.77"),
  ("Baseline + RPN", "67.95", "94.40", "51.45", "80.40"),
  ("Baseline + RPN (w/o RPN during inference)", "67.95", "94.40", "50.85", "79.40"),
]
# Table II: mIoU, mAP, Prop. AR; the eight value rows of case 1 go to its first eight labels.
PAPER_TABLE_2 = [
  ("Baseline", "67.34", "50.38", "79.58"),
  ("Baseline + ROI_1", "67.89", "51.42", "80.56"),
  ("Baseline + ROI_1 (w/o ROI_1 during inference)", "67.89", "51.25", "79.95"),
  ("Baseline + RPN_1", "68.52", "51.57", "82.59"),
  ("Baseline + RPN_1 (w/o RPN_1 during inference)", "67.95", "50.84", "78.86"),
  ("Baseline + ROI_1 + RPN_1", "68.18", "51.40", "83.34"),
  ("Baseline + ROI_1 + RPN_1 (w/o ROI_1 and RPN_1 during inference)", "68.18", "49.93", "79.02"),
  ("Baseline + ROI_1 + RPN_1 (w/o ROI_1 during inference)", "68.18", "51.20", "82.72"),
  ("Baseline + ROI_1 + RPN_1 (w/o RPN_1 during inference)", "68.18", "50.30", "79.90"),
  ("Baseline + ROI_2", "68.33", "51.50", "80.70"),
  ("Baseline + ROI_2 (w/o ROI_2 during inference)", "68.33", "51.28", "79.84"),
  ("Baseline + RPN_2", "68.23", "51.71", "82.54"),
  ("Baseline + RPN_2 (w/o RPN_2 during inference)", "68.23", "50.17", "79.84"),
  ("Baseline + ROI_3", "68.24", "51.21", "80.55"),
  ("Baseline + ROI_3 (w/o ROI_3 during inference)", "68.24", "51.13", "80.29"),
  ("Baseline + RPN_3", "68.43", "51.56", "82.84"),
  ("Baseline + RPN_3 (w/o RPN_3 during inference)", "68.43", "50.43", "79.64"),
]


def _write(root, name, metrics, step=800, config_steps=None, max_proposals=None):
  os.makedirs(root / name, exist_ok=True)
  if config_steps is not None:  # a started run: its config.json decides the final step
    config = {"train": {"num_steps": config_steps}}
    if max_proposals is not None:  # and the P of its AR@<P> keys
      config["eval"] = {"max_proposals": max_proposals}
    (root / name / "config.json").write_text(json.dumps(config))
  (root / name / f"metrics_{step}.json").write_text(json.dumps(metrics))


def _cells(markdown):
  """The text's first markdown table as {header: cell} per row."""
  lines = markdown.splitlines()
  lines = lines[next(i for i, line in enumerate(lines) if line.startswith("| ")) :]
  lines = list(itertools.takewhile(lambda line: line.startswith("|"), lines))
  lines = [line for line in lines if line.startswith("| ")]
  split = lambda line: [c.strip() for c in line.strip().strip("|").split("|")]
  header = split(lines[0])
  return [dict(zip(header, split(line), strict=True)) for line in lines[1:]]


def _levels(markdown):
  """The per-level markdown as {section heading: _cells of its table}."""
  sections = markdown.split("\n## ")[1:]
  return {section.split("\n", 1)[0]: _cells(section) for section in sections}


def _reproduce(*args, check=True):
  return subprocess.run(
    [sys.executable, "-m", "segrpn_jax.paper.reproduce", *args],
    capture_output=True,
    text=True,
    check=check,
    cwd=ROOT,
    # This checkout's package, as pytest's pythonpath gives the tests (not another install).
    env={**os.environ, "PYTHONPATH": ROOT},
  )


@pytest.mark.parametrize(
  ("table", "typed", "paper_headers"),
  [
    (1, PAPER_TABLE_1, ["paper mIoU", "paper mIoU*", "paper mAP", "paper AR"]),
    (2, PAPER_TABLE_2, ["paper mIoU", "paper mAP", "paper AR"]),
  ],
)
def test_every_paper_value_on_an_empty_root(tmp_path, table, typed, paper_headers):
  markdown = tables.write_table(table, str(tmp_path / "runs"), synthetic=True)
  rows = _cells(markdown)
  assert [(r["Row"], *(r[h] for h in paper_headers)) for r in rows] == typed
  assert all(r["n"] == "0/1" and r["mAP"] == r["AR50"] == "missing" for r in rows)
  # The paper's changes against its baseline, for mAP and Prop. AR.
  base = typed[0]
  for row, values in zip(rows, typed, strict=True):
    for header, index in (("paper ΔmAP", -2), ("paper ΔAR", -1)):
      assert float(row[header]) == pytest.approx(float(values[index]) - float(base[index]))
  # The paper's AR sits right beside our AR50, and the footnote says so.
  header = list(rows[0])
  assert header[header.index("AR50") + 1] == "paper AR"
  assert "sits beside our AR50@1000" in markdown
  assert ("appears twice" in markdown) == (table == 2)
  assert (tmp_path / "runs" / f"table{table}_changes.png").exists()
  # The per-level file: the same rows, every cell missing.
  levels = _levels((tmp_path / "runs" / f"table{table}_levels.md").read_text())
  assert [heading.split(":")[0] for heading in levels] == ["AR50@1000", "AR@1000", "AP50"]
  for section in levels.values():
    assert [r["Row"] for r in section] == [values[0] for values in typed]
    assert all(r["n"] == "0/1" and r["L2"] == r["L6"] == "missing" for r in section)


BASELINE = {"mIoU": 0.6012, "mAP50": 0.5, "AR@1000": 0.7, "inference/none/mAP50": 0.45,
            "inference/none/AR@1000": 0.75, "inference/none/AR50@1000": 0.9,
            "mIoU*/semantic": 0.9,
            # Per level: AR50 and AP50 under the row's fusion (the unprefixed AR50 L2 is not
            # read: the fusion's key wins), AR unprefixed only (the training's own fusion falls
            # back to it); no L6 but AP50's, which seed 1 lacks.
            "inference/none/AR50@1000/L2": 0.8, "inference/none/AR50@1000/L3": 0.9,
            "inference/none/AR50@1000/L4": 0.92, "inference/none/AR50@1000/L5": 0.96,
            "AR50@1000/L2": 0.1,
            "AR@1000/L2": 0.4, "AR@1000/L3": 0.5, "AR@1000/L4": 0.55, "AR@1000/L5": 0.6,
            "inference/none/AP50/L2": 0.7, "inference/none/AP50/L3": 0.8,
            "inference/none/AP50/L4": 0.85, "inference/none/AP50/L5": 0.9,
            "inference/none/AP50/L6": 0.5}  # fmt: skip
BASELINE_SEED1 = {
  **{k: v for k, v in BASELINE.items() if k != "inference/none/AP50/L6"},
  "mIoU": 0.6212, "inference/none/mAP50": 0.47, "inference/none/AR50@1000/L2": 0.84,
  "AR@1000/L3": 0.53, "inference/none/AP50/L5": 0.95,
}  # fmt: skip
SEGRPN_ROI = {"mIoU": 0.61, "mIoU*": 0.93456, "inference/roi/mAP50": 0.52,
              "inference/roi/AR@1000": 0.8, "inference/roi/AR50@1000": 0.95,
              "inference/none/mAP50": 0.51, "inference/none/AR@1000": float("nan"),
              # Per level: the unprefixed AR L2 is the roi row's (the training's fusion), not
              # the none row's.
              "inference/roi/AR50@1000/L2": 0.85, "inference/roi/AR50@1000/L3": 0.95,
              "inference/none/AR50@1000/L2": 0.75, "AR@1000/L2": 0.45,
              "inference/roi/AP50/L2": 0.66, "inference/none/AP50/L2": 0.65}  # fmt: skip


def test_table_one_over_seeds_with_a_missing_run(tmp_path):
  _write(tmp_path, "baseline", BASELINE)
  _write(tmp_path, "baseline-seed1", BASELINE_SEED1)
  _write(tmp_path, "segrpn-roi", SEGRPN_ROI, step=5, config_steps=5)
  # segrpn-rpn: an unfinished run (an intermediate evaluation only) is missing, never filled in.
  _write(tmp_path, "segrpn-rpn", {**SEGRPN_ROI, "inference/rpn/mAP50": 0.9}, step=400)
  markdown = tables.write_table(1, str(tmp_path), synthetic=True, seeds=2)
  assert (tmp_path / "table1.md").read_text() == markdown
  rows = _cells(markdown)
  ours = ["n", "mIoU", "mIoU*", "mAP", "AR50", "AR", "ΔmAP", "ΔAR50", "ΔAR"]
  # Baseline: two seeds, mean ± sample std (mIoU 60.12, 62.12: std sqrt(2); mAP 45, 47).
  assert [rows[0][h] for h in ours] == [
    "2", "61.12 ± 1.41", "-", "46.00 ± 1.41", "90.00 ± 0.00", "75.00 ± 0.00",
    "+0.00", "+0.00", "+0.00",
  ]  # fmt: skip
  # +ROI: one of two seeds finished; changes against the baseline's means.
  assert [rows[1][h] for h in ours] == [
    "1/2", "61.00", "93.46", "52.00", "95.00", "80.00", "+6.00", "+5.00", "+5.00"
  ]  # fmt: skip
  # w/o ROI: no AR50 key for fusion none, AR NaN.
  assert [rows[2][h] for h in ours] == [
    "1/2", "61.00", "93.46", "51.00", "-", "nan", "+5.00", "-", "nan"
  ]  # fmt: skip
  assert [rows[3][h] for h in ours] == ["0/2", *["missing"] * 8]
  assert rows[1]["paper mAP"] == "51.87" and rows[3]["paper AR"] == "80.40"

  # The CSV keeps every seed's value.
  lines = list(csv.DictReader(io.StringIO((tmp_path / "table1.csv").read_text())))
  assert [(r["run"], r["seed"], r["status"]) for r in lines] == [
    ("baseline", "0", "ok"), ("baseline", "1", "ok"), ("segrpn-roi", "0", "ok"),
    ("segrpn-roi", "0", "ok"), ("segrpn-rpn", "", "missing"), ("segrpn-rpn", "", "missing"),
  ]  # fmt: skip
  assert [float(r["mAP"]) for r in lines[:4]] == pytest.approx([45.0, 47.0, 52.0, 51.0])
  assert lines[0]["mIoU*"] == "-" and lines[3]["AR"] == "nan"
  assert lines[0]["paper_mIoU*"] == "NA" and lines[1]["paper_AR"] == "79.58"

  # The plotted changes: the standard error of the difference of the means.
  collected = tables.collect(1, str(tmp_path), synthetic=True, seeds=2)
  roi = collected[1]
  assert roi["delta"]["mAP"] == pytest.approx(6.0)
  assert math.isnan(roi["delta_se"]["mAP"])  # one +ROI seed: no spread to show
  assert collected[0]["delta_se"]["mAP"] == pytest.approx(math.sqrt(2 * 2 / 2))
  picture = Image.open(tmp_path / "table1_changes.png")
  assert picture.format == "PNG" and picture.width > picture.height > 100

  # Per FPN level, cell by cell: L2..L6 of each row, one decimal.
  levels = _levels((tmp_path / "table1_levels.md").read_text())
  headings = [h.split(":")[0] for h in levels]
  assert headings == ["AR50@1000", "AR@1000", "AP50"]
  cells = {
    h.split(":")[0]: [[r[k] for k in ("Run", "Fusion", "n", "L2", "L3", "L4", "L5", "L6")]
                      for r in section]
    for h, section in levels.items()
  }  # fmt: skip
  missing = [["segrpn-rpn", "rpn", "0/2", *["missing"] * 5],
             ["segrpn-rpn", "none", "0/2", *["missing"] * 5]]  # fmt: skip
  # Baseline, seeds 0 and 1: AR50 L2 80 and 84 (sample std 4 / sqrt(2) = 2.83), AR L3 50 and 53
  # (3 / sqrt(2) = 2.12), AP50 L5 90 and 95 (3.54); AP50 L6 only in seed 0: '-'.
  assert cells["AR50@1000"] == [
    ["baseline", "none", "2", "82.0 ± 2.8", "90.0 ± 0.0", "92.0 ± 0.0", "96.0 ± 0.0", "-"],
    ["segrpn-roi", "roi", "1/2", "85.0", "95.0", "-", "-", "-"],
    ["segrpn-roi", "none", "1/2", "75.0", "-", "-", "-", "-"],
    *missing,
  ]
  assert cells["AR@1000"] == [
    ["baseline", "none", "2", "40.0 ± 0.0", "51.5 ± 2.1", "55.0 ± 0.0", "60.0 ± 0.0", "-"],
    ["segrpn-roi", "roi", "1/2", "45.0", "-", "-", "-", "-"],
    ["segrpn-roi", "none", "1/2", "-", "-", "-", "-", "-"],
    *missing,
  ]
  assert cells["AP50"] == [
    ["baseline", "none", "2", "70.0 ± 0.0", "80.0 ± 0.0", "85.0 ± 0.0", "92.5 ± 3.5", "-"],
    ["segrpn-roi", "roi", "1/2", "66.0", "-", "-", "-", "-"],
    ["segrpn-roi", "none", "1/2", "65.0", "-", "-", "-", "-"],
    *missing,
  ]
  assert [r["Row"] for r in levels[next(iter(levels))]] == [r["Row"] for r in rows]
  # Its CSV keeps every seed's value.
  lines = list(csv.DictReader(io.StringIO((tmp_path / "table1_levels.csv").read_text())))
  assert [(r["run"], r["inference_fusion"], r["seed"], r["max_proposals"]) for r in lines] == [
    ("baseline", "none", "0", "1000"), ("baseline", "none", "1", "1000"),
    ("segrpn-roi", "roi", "0", "1000"), ("segrpn-roi", "none", "0", "1000"),
    ("segrpn-rpn", "rpn", "", "missing"), ("segrpn-rpn", "none", "", "missing"),
  ]  # fmt: skip
  assert [float(r["AR50/L2"]) for r in lines[:4]] == pytest.approx([80.0, 84.0, 85.0, 75.0])
  assert float(lines[0]["AP50/L6"]) == pytest.approx(50.0) and lines[1]["AP50/L6"] == "-"
  assert lines[3]["AR/L2"] == "-" and lines[4]["AP50/L3"] == "missing"


def test_table_two_rows_and_fallback_to_the_top_level_keys(tmp_path):
  # An old-style metrics file without per-fusion keys: only the training's own fusion row can
  # use the top-level mAP50/AR@1000; its w/o rows stay "-".
  _write(tmp_path, "case1-roi+rpn", {"mIoU": 0.5, "mIoU*": 0.9, "mAP50": 0.4, "AR@1000": 0.6})
  rows = tables.collect(2, str(tmp_path), synthetic=True, names=["case1-roi+rpn", "case1-rpn"])
  assert [(r["training"], r["fusion"]) for r in rows] == [
    ("case1-rpn", "rpn"), ("case1-rpn", "none"), ("case1-roi+rpn", "roi+rpn"),
    ("case1-roi+rpn", "none"), ("case1-roi+rpn", "rpn"), ("case1-roi+rpn", "roi"),
  ]  # fmt: skip
  assert rows[0]["status"] == "missing" and rows[0]["paper"]["mIoU"] == 68.52
  assert rows[2]["mean"] == pytest.approx(
    {"mIoU": 50.0, "mIoU*": 90.0, "mAP": 40.0, "AR50": None, "AR": 60.0}
  )
  assert rows[3]["mean"]["mAP"] is None and rows[3]["mean"]["mIoU"] == pytest.approx(50.0)
  assert rows[2]["delta"]["mAP"] is None  # the baseline has not finished
  # Per level: the AR keys spell the run's config.eval.max_proposals (300 here).
  _write(tmp_path, "case2-rpn", {"AR50@300/L3": 0.7, "AR50@1000/L3": 0.2, "AP50/L3": 0.6},
         config_steps=800, max_proposals=300)  # fmt: skip
  own, without = tables.collect(2, str(tmp_path), synthetic=True, names=["case2-rpn"])
  assert own["proposals"] == {0: 300} and own["level_mean"]["AR50", 3] == pytest.approx(70.0)
  assert own["level_mean"]["AP50", 3] == pytest.approx(60.0) and own["level_mean"]["AR", 3] is None
  assert without["level_mean"]["AR50", 3] is None  # no fallback for a w/o row
  assert "## AR50@300: " in tables.to_levels_markdown([own, without], 2)
  assert tuple(range(scale.MIN_LEVEL, scale.MAX_LEVEL + 1)) == tables.LEVELS  # P2..P6
  # The paper's Table II: baseline + case 1 (roi, rpn, roi+rpn) + cases 2 and 3 (roi, rpn).
  assert len(tables.trainings(2)) == 8 and len(tables.TABLES[2]) == 17
  with pytest.raises(errors.UserError, match="--rows=case9-roi: not a training of Table 2"):
    tables.trainings(2, ["case9-roi"])
  # The paper's Fig. 5 network is no row of either table, and trains by name with either.
  for table in (1, 2):
    assert "segrpn-no-rpn-mask" not in [t.name for t in tables.trainings(table)]
    (extra,) = tables.trainings(table, ["segrpn-no-rpn-mask"])
    assert extra.config_arg(synthetic=True) == "segrpn.py:no_rpn_mask,synthetic"
  with pytest.raises(errors.ConfigError, match="unknown config token 'no_such_token'"):
    os.makedirs(tmp_path / "baseline")  # started, without a config.json: the file decides
    tables.num_steps(tables.TRAININGS["baseline"], str(tmp_path), tokens=("no_such_token",))


def test_dry_run_prints_one_command_per_training_and_seed(tmp_path):
  _write(tmp_path, "segrpn-roi-seed1", SEGRPN_ROI, step=5, config_steps=5)  # finished
  out = _reproduce(
    "--table=1", f"--root={tmp_path}", "--synthetic", "--seeds=2", "--tokens=extra",
    "--rows=baseline,segrpn-roi", "--dry_run",
  ).stdout.splitlines()  # fmt: skip
  root = str(tmp_path)
  main = "python -m segrpn_jax.main --config=segrpn_jax/configs"
  assert out == [
    f"{main}/baseline.py:synthetic,extra --workdir={root}/baseline --config.seed=0",
    f"{main}/segrpn.py:roi,synthetic,extra --workdir={root}/segrpn-roi --config.seed=0",
    f"{main}/baseline.py:synthetic,extra --workdir={root}/baseline-seed1 --config.seed=1",
    "# finished, would be skipped: "
    f"{main}/segrpn.py:roi,synthetic,extra --workdir={root}/segrpn-roi-seed1 --config.seed=1",
  ]
  paper = tables.command(tables.TRAININGS["case3-rpn"], "runs", seed=2)
  assert paper[3:] == [
    "--config=segrpn_jax/configs/case3.py:rpn",
    "--workdir=runs/case3-rpn-seed2",
    "--config.seed=2",
  ]
  # Overrides follow the seed, on every run; a malformed one is refused before anything runs.
  out = _reproduce(
    "--table=1", f"--root={tmp_path}", "--rows=baseline", "--dry_run",
    "--override=data.eval_split=validation[:2000]", "--override=train.num_steps=10",
  ).stdout.splitlines()  # fmt: skip
  assert out == [
    f"{main}/baseline.py --workdir={root}/baseline --config.seed=0 "
    "'--config.data.eval_split=validation[:2000]' --config.train.num_steps=10"
  ]
  for bad, cause in [("eval_split", "not KEY=VALUE"), ("seed=3", "sets config.seed per run")]:
    refused = _reproduce(
      "--table=1", f"--root={tmp_path}", "--dry_run", f"--override={bad}", check=False
    )
    assert refused.returncode == errors.EXIT_USER_ERROR
    assert refused.stderr.startswith(f"error: --override='{bad}'")
    assert cause in refused.stderr
  both = _reproduce("--table=1", f"--root={tmp_path}", "--dry_run", "--collect", check=False)
  assert both.returncode == errors.EXIT_USER_ERROR
  assert both.stderr.startswith("error: --dry_run and --collect exclude each other")


def test_the_sweep_skips_finished_runs_and_stops_on_a_failure(tmp_path):
  _write(tmp_path, "baseline", BASELINE)
  calls = []

  def fake_run(argv, returncode=0, **kwargs):
    calls.append(argv)
    kwargs["stdout"].write("training...\n")
    return types.SimpleNamespace(returncode=returncode)

  ran = tables.run_trainings(1, str(tmp_path), synthetic=True, seeds=2, run=fake_run)
  # Seed 0 of every training first, then seed 1; the finished baseline seed 0 is skipped.
  assert ran == ["segrpn-roi", "segrpn-rpn", "baseline-seed1", "segrpn-roi-seed1",
                 "segrpn-rpn-seed1"]  # fmt: skip
  assert [c[0] for c in calls] == [sys.executable] * 5
  assert calls[2][1:] == tables.command(tables.TRAININGS["baseline"], str(tmp_path), True, 1)[1:]
  assert calls[2][-1] == "--config.seed=1"
  tables.run_trainings(
    1, str(tmp_path), True, ["baseline"], seeds=3, run=fake_run, overrides=("train.num_steps=7",)
  )
  assert calls[-1][-2:] == ["--config.seed=2", "--config.train.num_steps=7"]
  assert (tmp_path / "segrpn-rpn-seed1" / "train.log").read_text() == "training...\n"
  with pytest.raises(errors.TrainingError, match=r"training segrpn-rpn failed \(exit code 3\)"):
    tables.run_trainings(
      1, str(tmp_path), True, ["segrpn-rpn"], run=lambda argv, **kw: fake_run(argv, 3, **kw)
    )
  with pytest.raises(errors.UserError, match="--seeds=0"):
    tables.schedule(1, seeds=0)


def test_collect_mode_of_the_command(tmp_path):
  _write(tmp_path, "baseline", BASELINE)
  _write(tmp_path, "baseline-seed3", {**BASELINE, "inference/none/mAP50": 0.55})  # found too
  printed = _reproduce(
    "--table=1", f"--root={tmp_path}", "--synthetic", "--collect", "--rows=baseline"
  ).stdout
  rows = _cells(printed)
  # mAP 45 and 55: sample std 5 * sqrt(2).
  assert len(rows) == 1 and rows[0]["n"] == "2" and rows[0]["mAP"] == "50.00 ± 7.07"
  assert rows[0]["mIoU"] == "60.12 ± 0.00" and rows[0]["paper mIoU"] == "67.34"
  # Printed: the table, then the per-level tables, each as written.
  levels = (tmp_path / "table1_levels.md").read_text()
  assert (tmp_path / "table1.md").read_text() + "\n" + levels == printed
  assert _levels(levels)["AR50@1000: recall of the proposals at IoU 0.5"][0]["L2"] == "80.0 ± 0.0"
