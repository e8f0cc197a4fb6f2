"""scripts/bench_vs_torchvision.py without torch: importing it loads neither torch nor JAX, and its
pure parts (--size, the pooled medians, the ratios and the table) on hand-made worker records."""

import argparse
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "bench_vs_torchvision.py")


def _load():
  spec = importlib.util.spec_from_file_location("bench_vs_torchvision", SCRIPT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


bench = _load()

# Two rounds of each contender; the medians pool every timed step of both rounds.
RECORDS = [
  {"contender": "torchvision", "mode": "train", "steps_s": [2.0, 4.0], "first_s": 5.0,
   "flops": None},
  {"contender": "torchvision", "mode": "train", "steps_s": [3.0, 9.0], "first_s": 7.0,
   "flops": None},
  {"contender": "ours-det", "mode": "train", "steps_s": [1.0, 2.0], "first_s": 60.0,
   "flops": 3e11},
  {"contender": "ours-det", "mode": "train", "steps_s": [1.5, 1.5], "first_s": 50.0,
   "flops": 3e11},
  {"contender": "torchvision", "mode": "infer", "steps_s": [1.0, 1.0, 1.0], "first_s": 2.0,
   "flops": None},
  {"contender": "ours-det", "mode": "infer", "steps_s": [0.5, 0.25, 0.5], "first_s": 30.0,
   "flops": 1e11},
]  # fmt: skip


def test_importing_the_script_loads_neither_torch_nor_jax():
  code = (
    "import importlib.util, sys; "
    f"spec = importlib.util.spec_from_file_location('b', {SCRIPT!r}); "
    "spec.loader.exec_module(importlib.util.module_from_spec(spec)); "
    "print(sorted(m for m in ('torch', 'torchvision', 'jax') if m in sys.modules))"
  )
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"


def test_parse_size():
  assert bench.parse_size("512x1024") == (512, 1024)
  assert bench.parse_size("128X256") == (128, 256)
  for bad in ("512", "512x", "ax1024", "500x1000", "0x64", "-64x64", "64x64x64"):
    with pytest.raises(argparse.ArgumentTypeError):
      bench.parse_size(bad)
  assert bench.parse_args(["--size", "256x512"]).size == (256, 512)


def test_summary_pools_the_rounds_and_counts_gflops():
  summary = bench.summarize(RECORDS)
  tv, ours = summary["torchvision"]["train"], summary["ours-det"]["train"]
  assert tv["median_s"] == 3.5  # median of 2, 3, 4, 9
  assert (tv["min_s"], tv["max_s"], tv["steps"], tv["rounds"]) == (2.0, 9.0, 4, 2)
  assert tv["first_s"] == 6.0  # median over the rounds
  assert tv["flops"] is None and tv["gflops_per_s"] is None
  assert ours["median_s"] == 1.5
  assert ours["gflops_per_s"] == pytest.approx(200.0)  # 300 GFLOP in 1.5 s
  assert summary["ours-det"]["infer"]["median_s"] == 0.5


def test_ratios_are_times_over_torchvision():
  summary = bench.summarize(RECORDS)
  assert bench.ratio(summary, "ours-det", "train") == pytest.approx(1.5 / 3.5)
  assert bench.ratio(summary, "ours-det", "infer") == pytest.approx(0.5)
  assert bench.ratio(summary, "torchvision", "infer") == 1.0
  assert bench.ratio(summary, "ours-segrpn", "train") is None  # not measured
  assert bench.ratio(summary, "ours-det", "train", reference="ours-segrpn") is None


def test_table():
  summary = bench.summarize(RECORDS)
  table = bench.format_table(
    summary, ["torchvision", "ours-det", "ours-segrpn"], ["train", "infer"]
  )
  lines = table.splitlines()
  assert len(lines) == 5  # header, separator, three contenders
  cells = lambda line: [c.strip() for c in line.strip("|").split("|")]
  assert len(cells(lines[0])) == 9 and lines[1].count("---") == 9
  assert cells(lines[2]) == ["torchvision", "3.500", "1.00", "-", "-", "1.000", "1.00", "-", "-"]
  # ours-det: 300 GFLOP in 1.5 s, 100 GFLOP in 0.5 s.
  ours = ["ours-det", "1.500", "0.43", "300.0", "200.0", "0.500", "0.50", "100.0", "200.0"]
  assert cells(lines[3]) == ours
  assert cells(lines[4]) == ["ours-segrpn"] + ["-"] * 8
  # A mode left out shows '-' even where records exist.
  train_only = bench.format_table(summary, ["ours-det"], ["train"]).splitlines()[2]
  assert cells(train_only)[5:] == ["-"] * 4


@pytest.mark.parametrize(
  "absent, named",
  [
    (("torch",), "torch"),
    (("torchvision",), "torchvision"),
    (("torch", "torchvision"), "torch and torchvision"),
  ],
)
def test_missing_torch_exits_with_the_cause_and_the_install_command(monkeypatch, absent, named):
  # Each package is made absent or present here, so the outcome does not depend on what this
  # machine has installed (find_spec is all missing_torch asks).
  monkeypatch.setattr(
    bench.importlib.util, "find_spec", lambda name: None if name in absent else object()
  )
  message = bench.missing_torch()
  assert message.startswith(f"bench_vs_torchvision: {named} not installed, which the")
  assert "pip install -e '.[bench]'" in message
  with pytest.raises(SystemExit) as exit_info:
    bench.main(["--steps", "1"])
  assert exit_info.value.code == message  # a string code: printed to stderr, exit status 1


def test_with_torch_and_torchvision_present_nothing_is_missing(monkeypatch):
  monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name: object())
  assert bench.missing_torch() is None
