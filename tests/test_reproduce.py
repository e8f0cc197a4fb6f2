"""segrpn_jax.paper.reproduce and segrpn_jax.paper.tables: the commands of the sweep, which runs
it skips, and the tables built from hand-written metrics files (some runs missing)."""

import csv
import io
import json
import os
import runpy
import subprocess
import sys
import types

import pytest

from segrpn_jax.paper import tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "segrpn_jax", "paper", "reproduce.py")


def _write(root, name, metrics, step=800, config_steps=None):
  os.makedirs(root / name, exist_ok=True)
  if config_steps is not None:  # a started run: its config.json decides the final step
    (root / name / "config.json").write_text(json.dumps({"train": {"num_steps": config_steps}}))
  (root / name / f"metrics_{step}.json").write_text(json.dumps(metrics))


BASELINE = {"mIoU": 0.6012, "mAP50": 0.5, "AR@1000": 0.7, "inference/none/mAP50": 0.45,
            "inference/none/AR@1000": 0.75, "mIoU*/semantic": 0.9}  # fmt: skip
SEGRPN_ROI = {"mIoU": 0.61, "mIoU*": 0.93456, "inference/roi/mAP50": 0.52,
              "inference/roi/AR@1000": 0.8, "inference/none/mAP50": 0.51,
              "inference/none/AR@1000": float("nan")}  # fmt: skip


def test_table_one_from_metrics_files_with_a_missing_run(tmp_path):
  _write(tmp_path, "baseline", BASELINE)
  _write(tmp_path, "segrpn-roi", SEGRPN_ROI, step=5, config_steps=5)
  # segrpn-rpn: an unfinished run (an intermediate evaluation only) is missing, never filled in.
  _write(tmp_path, "segrpn-rpn", {**SEGRPN_ROI, "inference/rpn/mAP50": 0.9}, step=400)
  markdown = tables.write_table(1, str(tmp_path), synthetic=True)
  assert (tmp_path / "table1.md").read_text() == markdown
  body = [line for line in markdown.splitlines() if line.startswith("| ")][1:]
  cells = [[c.strip() for c in line.strip("|").split("|")] for line in body]
  assert cells == [
    # baseline: mAP/AR of fusion none; mIoU* not reported; the paper's known numbers.
    ["Baseline", "baseline", "60.12", "-", "45.00", "75.00", "67.34", "n/a", "50.38", "79.58"],
    ["SegRPN +ROI", "segrpn-roi", "61.00", "93.46", "52.00", "80.00",
     "n/a", "n/a", "51.87", "n/a"],
    ["SegRPN +ROI, w/o ROI during inference", "segrpn-roi", "61.00", "93.46", "51.00", "nan",
     "n/a", "n/a", "n/a", "n/a"],
    ["SegRPN +RPN", "segrpn-rpn", *["missing"] * 4, *["n/a"] * 4],
    ["SegRPN +RPN, w/o RPN during inference", "segrpn-rpn", *["missing"] * 4, *["n/a"] * 4],
  ]  # fmt: skip
  rows = list(csv.DictReader(io.StringIO((tmp_path / "table1.csv").read_text())))
  assert [r["status"] for r in rows] == ["ok", "ok", "ok", "missing", "missing"]
  assert [r["inference_fusion"] for r in rows] == ["none", "roi", "none", "rpn", "none"]
  assert rows[1]["mAP"] == "52.00" and rows[1]["paper_mAP"] == "51.87"
  assert rows[3]["mIoU"] == "missing" and rows[3]["paper_mIoU"] == "n/a"


def test_table_two_rows_and_fallback_to_the_top_level_keys(tmp_path):
  # An old-style metrics file without per-fusion keys: only the training's own fusion row can
  # use the top-level mAP50/AR@1000; its w/o rows stay "-".
  _write(tmp_path, "case1-roi+rpn", {"mIoU": 0.5, "mIoU*": 0.9, "mAP50": 0.4, "AR@1000": 0.6})
  rows = tables.collect(2, str(tmp_path), synthetic=True, names=["case1-roi+rpn", "case1-rpn"])
  assert [(r["label"], r["fusion"]) for r in rows] == [
    ("Case 1 +RPN", "rpn"),
    ("Case 1 +RPN, w/o RPN during inference", "none"),
    ("Case 1 +ROI+RPN", "roi+rpn"),
    ("Case 1 +ROI+RPN, w/o ROI during inference", "rpn"),
    ("Case 1 +ROI+RPN, w/o RPN during inference", "roi"),
    ("Case 1 +ROI+RPN, w/o ROI+RPN during inference", "none"),
  ]
  assert rows[0]["status"] == "missing" and rows[0]["paper"]["mIoU"] == 68.52
  assert rows[2]["ours"] == pytest.approx({"mIoU": 50.0, "mIoU*": 90.0, "mAP": 40.0, "AR": 60.0})
  assert rows[3]["ours"]["mAP"] is None and rows[3]["ours"]["mIoU"] == pytest.approx(50.0)
  # Every Table II training: baseline + 3 cases x 3 fusions, 1 + 9 * 2 + 3 * 2 rows.
  assert len(tables.trainings(2)) == 10 and len(tables.TABLES[2]) == 1 + 3 * (2 + 2 + 4)
  with pytest.raises(ValueError, match="--rows case9-roi: not a training of Table 2"):
    tables.trainings(2, ["case9-roi"])


def test_dry_run_prints_every_command(tmp_path):
  _write(tmp_path, "segrpn-roi", SEGRPN_ROI)  # finished at the synthetic 800 steps
  out = subprocess.run(
    [sys.executable, SCRIPT, "--table", "1", "--root", str(tmp_path), "--synthetic", "--dry-run"],
    capture_output=True,
    text=True,
    check=True,
    cwd=ROOT,
    # This checkout's package, as pytest's pythonpath gives the tests (not another install).
    env={**os.environ, "PYTHONPATH": ROOT},
  ).stdout.splitlines()
  root = str(tmp_path)
  assert out == [
    "python -m segrpn_jax.main "
    f"--config=segrpn_jax/configs/baseline.py:synthetic --workdir={root}/baseline",
    "# finished, would be skipped: python -m segrpn_jax.main "
    f"--config=segrpn_jax/configs/segrpn.py:roi,synthetic --workdir={root}/segrpn-roi",
    "python -m segrpn_jax.main "
    f"--config=segrpn_jax/configs/segrpn.py:rpn,synthetic --workdir={root}/segrpn-rpn",
  ]
  paper = tables.command(tables.TRAININGS["case3-roi+rpn"], "runs")
  assert paper[3:] == [
    "--config=segrpn_jax/configs/case3.py:roi+rpn",
    "--workdir=runs/case3-roi+rpn",
  ]


def test_the_sweep_skips_finished_runs_and_stops_on_a_failure(tmp_path):
  _write(tmp_path, "baseline", BASELINE)
  calls = []

  def fake_run(argv, returncode=0, **kwargs):
    calls.append(argv)
    kwargs["stdout"].write("training...\n")
    return types.SimpleNamespace(returncode=returncode)

  assert tables.run_trainings(1, str(tmp_path), synthetic=True, run=fake_run) == [
    "segrpn-roi",
    "segrpn-rpn",
  ]
  assert [c[0] for c in calls] == [sys.executable] * 2
  assert calls[0][1:] == tables.command(tables.TRAININGS["segrpn-roi"], str(tmp_path), True)[1:]
  assert (tmp_path / "segrpn-rpn" / "train.log").read_text() == "training...\n"
  with pytest.raises(RuntimeError, match=r"training segrpn-rpn failed \(exit code 3\)"):
    tables.run_trainings(
      1, str(tmp_path), True, ["segrpn-rpn"], run=lambda argv, **kw: fake_run(argv, 3, **kw)
    )


def test_collect_mode_of_the_script(tmp_path, capsys):
  _write(tmp_path, "baseline", BASELINE)
  script = runpy.run_path(SCRIPT, run_name="reproduce")
  argv = ["--table", "1", "--root", str(tmp_path), "--synthetic", "--collect", "--rows", "baseline"]
  assert script["main"](argv) == 0
  printed = capsys.readouterr().out
  assert "| Baseline | baseline | 60.12 | - | 45.00 | 75.00 |" in printed
  assert (tmp_path / "table1.md").read_text() == printed
