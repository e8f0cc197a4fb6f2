"""scripts/bench_vs_torchvision.py without torch: importing it loads neither torch nor JAX, and its
pure parts (--size, the pooled medians, the ratios and the table) on hand-made worker records;
the --device gpu plumbing (defaults, cell order, worker commands and environment, concurrent
compilation, the quick start's results) with stand-in workers, as no GPU is needed to test it."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time

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


def test_device_defaults():
  cpu = bench.parse_args([])
  assert (cpu.batch, cpu.dtype, cpu.steps, cpu.warmup, cpu.rounds, cpu.budget_s) == (
    [1],
    ["float32"],
    6,
    2,
    2,
    None,
  )
  gpu = bench.parse_args(["--device", "gpu"])
  assert (gpu.batch, gpu.dtype, gpu.steps, gpu.warmup, gpu.rounds, gpu.budget_s) == (
    [1, 8],
    ["float32", "bfloat16"],
    8,
    2,
    1,
    480.0,
  )
  argv = ["--device", "gpu", "--batch", "2", "--dtype", "bfloat16", "--rounds", "3"]
  given = bench.parse_args(argv)
  assert (given.batch, given.dtype, given.rounds) == ([2], ["bfloat16"], 3)
  with pytest.raises(SystemExit):
    bench.parse_args(["--batch", "0"])


def test_cells_run_the_paper_setting_first():
  args = bench.parse_args(["--device", "gpu", "--contenders", "torchvision", "ours-det"])
  cells = bench.cells_in_order(args)
  assert len(cells) == 2 * 2 * 2 * 2  # batch x dtype x mode x contender
  assert cells[:4] == [
    (1, "float32", "train", "torchvision"),
    (1, "float32", "train", "ours-det"),
    (1, "float32", "infer", "torchvision"),
    (1, "float32", "infer", "ours-det"),
  ]
  assert cells[-1] == (8, "bfloat16", "infer", "ours-det")
  # A GPU worker runs every cell of one contender and batch size; batch 1 first.
  both = ["float32", "bfloat16"]
  assert bench.worker_plan(args) == [
    (0, ("torchvision", ["train", "infer"], 1, both)),
    (0, ("ours-det", ["train", "infer"], 1, both)),
    (0, ("torchvision", ["train", "infer"], 8, both)),
    (0, ("ours-det", ["train", "infer"], 8, both)),
  ]
  # A CPU worker runs one cell; the contenders alternate within each round of each mode.
  cpu = bench.parse_args(["--contenders", "torchvision", "ours-det", "--modes", "infer"])
  assert bench.worker_plan(cpu) == [
    (0, ("torchvision", ["infer"], 1, ["float32"])),
    (0, ("ours-det", ["infer"], 1, ["float32"])),
    (1, ("torchvision", ["infer"], 1, ["float32"])),
    (1, ("ours-det", ["infer"], 1, ["float32"])),
  ]


def test_worker_command_and_environment(monkeypatch):
  args = bench.parse_args(["--device", "gpu", "--size", "256x512"])
  args.cache_dir = "/cache"
  both = ["float32", "bfloat16"]
  command = bench.worker_command(args, "ours-det", ["train", "infer"], 8, both, stop_at=12.5)
  parsed = bench.parse_args(command[2:])  # what the worker parses
  assert (parsed.worker, parsed.modes, parsed.size, parsed.batch, parsed.dtype) == (
    "ours-det", ["train", "infer"], (256, 512), [8], both
  )  # fmt: skip
  assert parsed.device == "gpu" and parsed.stop_at == 12.5 and not parsed.compile_only
  command = bench.worker_command(args, "ours-det", ["infer"], 1, ["float32"], compile_only=True)
  assert bench.parse_args(command[2:]).compile_only
  monkeypatch.delenv("PYTHONPATH", raising=False)
  env = bench.worker_env(args, compile_only=True)
  assert env["PYTHONPATH"] == ROOT and env["JAX_PLATFORMS"] == "cuda"
  assert env["JAX_COMPILATION_CACHE_DIR"] == "/cache"
  assert env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"
  assert "XLA_PYTHON_CLIENT_PREALLOCATE" not in bench.worker_env(args)  # timing: preallocated
  assert bench.worker_env(args, contender="ours-det")["JAX_PLATFORMS"] == "cuda"
  assert bench.worker_env(args, contender="torchvision")["JAX_PLATFORMS"] == "cpu"  # torch's GPU
  assert "JAX_PLATFORMS" not in bench.worker_env(bench.parse_args([]))  # cpu: as it was


def test_worker_output_is_parsed_or_the_failure_shown():
  record = {"first_s": 1.0, "steps_s": [0.5]}
  failed_cell = {"error": "XlaRuntimeError: RESOURCE_EXHAUSTED: out of memory"}
  stdout = f"noise\n{bench.RESULT_PREFIX}{json.dumps(record)}\n"
  assert bench.parse_worker_output(0, stdout + stdout, "", "x") == [record, record]
  # A failed cell is a record of its own; the worker's other cells are kept.
  both = stdout + f"{bench.RESULT_PREFIX}{json.dumps(failed_cell)}\n"
  assert bench.parse_worker_output(0, both, "", "x") == [record, failed_cell]
  # Stopped for time (no exit status): the cells it finished count; none is no error.
  assert bench.parse_worker_output(None, stdout, "", "x") == [record]
  assert bench.parse_worker_output(None, "", "", "x") == []
  failed = r"(?s)the x worker failed \(exit code 1\).*\nline\nImportError$"
  with pytest.raises(bench.WorkerFailed, match=failed):
    bench.parse_worker_output(1, "noise", "line\nImportError", "x")
  with pytest.raises(bench.WorkerFailed, match=r"exit code 0"):
    bench.parse_worker_output(0, "no result", "", "x")


def test_precompile_runs_the_jobs_concurrently_and_keeps_failures(monkeypatch):
  # Fake workers: each sleeps 1 s and prints a record (the cell with batch 3 fails).
  def fake_command(args, contender, modes, batch, dtypes, compile_only=False, stop_at=None):
    assert compile_only and len(modes) == len(dtypes) == 1
    record = json.dumps({"compile_s": float(batch), "flops": 1e9})
    code = (
      "import sys, time; time.sleep(1); "
      f"sys.exit(1) if {batch} == 3 else print({bench.RESULT_PREFIX!r} + {record!r})"
    )
    return [sys.executable, "-c", code]

  monkeypatch.setattr(bench, "worker_command", fake_command)
  args = bench.parse_args(["--device", "gpu", "--compile_jobs", "4"])
  args.cache_dir = "/unused"
  cells = [("ours-det", "train", b, "float32") for b in (1, 2, 3, 4)]
  start = time.monotonic()
  records = bench.precompile(args, cells, deadline=time.monotonic() + 60)
  assert time.monotonic() - start < 3.5  # four 1 s jobs at once, not 4 s one after another
  by_batch = {r["batch"]: r for r in records}
  assert sorted(by_batch) == [1, 2, 3, 4]
  assert by_batch[2]["compile_s"] == 2.0 and by_batch[2]["flops"] == 1e9
  assert "exit code 1" in by_batch[3]["error"]
  # A deadline already passed starts nothing.
  assert bench.precompile(args, cells, deadline=time.monotonic() - 1) == []


def test_read_quickstart(tmp_path):
  assert bench.read_quickstart(str(tmp_path / "none")) == {
    "metrics_step": None,
    "metrics": None,
    "checkpoint_steps": [],
  }
  for step in (400, 800):
    (tmp_path / f"metrics_{step}.json").write_text(json.dumps({"mAP50": step / 1000}))
  (tmp_path / "metrics_x.json").write_text("{}")
  for name in ("200", "800", "tmp_1"):
    (tmp_path / "checkpoints" / name).mkdir(parents=True)
  assert bench.read_quickstart(str(tmp_path)) == {
    "metrics_step": 800,
    "metrics": {"mAP50": 0.8},
    "checkpoint_steps": [200, 800],
  }


def test_the_quick_start_is_read_from_the_readme():
  readme = (
    "# x\n\n```sh\npip install -e . && python -m segrpn_jax.main --config=a.py:b --workdir=r\n"
  )
  readme += "tensorboard --logdir r\n```\n\n```sh\npytest -q\n```\n"
  assert bench.readme_quickstart(readme) == ("-m", "segrpn_jax.main", "--config=a.py:b")
  assert bench.readme_quickstart("no code") == bench.QUICKSTART
  with open(os.path.join(ROOT, "README.md")) as f:  # the real one names a config of the clone
    arguments = bench.readme_quickstart(f.read())
  assert arguments[:2] == ("-m", "segrpn_jax.main")
  config = next(a for a in arguments if a.startswith("--config="))
  assert os.path.isfile(os.path.join(ROOT, config.split("=", 1)[1].split(":")[0]))


def test_the_gpu_run_with_stand_ins_for_the_machine(monkeypatch, tmp_path, capsys):
  """main --device gpu with every step that needs a GPU replaced: its order, its tables, what
  it reports as failed and skipped, and its JSON."""
  monkeypatch.setattr(bench.tempfile, "tempdir", str(tmp_path))  # the run's scratch folder
  calls = []
  monkeypatch.setattr(bench, "prepare_gpu", lambda args: calls.append("prepare") or ["note"])
  monkeypatch.setattr(bench, "gpu_model", lambda: "NVIDIA H200, 143771 MiB, 570.00")

  def quickstart(args, workdir, timeout_s):
    calls.append("quickstart")
    assert timeout_s == bench.QUICKSTART_TIMEOUT_S
    return {"command": "python -m segrpn_jax.main ...", "wall_s": 200.0, "returncode": 0,
            "finished": True, "metrics_step": 800, "checkpoint_steps": [600, 800],
            "metrics": {"mAP50": 0.9, "AR@1000": 0.6, "mIoU": 0.7, "mIoU*": 0.95, "x": 1.0},
            "stderr_tail": ""}  # fmt: skip

  def precompile(args, cells, deadline):
    calls.append("precompile")
    assert {c for c, _, _, _ in cells} == {"ours-det", "ours-segrpn"} and len(cells) == 16
    return [{"contender": c, "mode": m, "batch": b, "dtype": d, "compile_s": 30.0, "flops": 1e9}
            for c, m, b, d in cells]  # fmt: skip

  def run_worker(args, contender, modes, batch, dtypes, deadline):
    calls.append((contender, batch))
    assert modes == ["train", "infer"] and dtypes == ["float32", "bfloat16"]
    records = []
    for dtype in dtypes:
      for mode in modes:
        base = {"contender": contender, "mode": mode, "batch": batch, "dtype": dtype}
        if (contender, batch, dtype, mode) == ("ours-segrpn", 8, "bfloat16", "train"):
          records.append({**base, "error": "XlaRuntimeError: out of memory"})
          continue
        seconds = {"torchvision": 0.2, "ours-det": 0.1, "ours-segrpn": 0.3}[contender] * batch
        records.append({**base, "steps_s": [seconds] * 3, "first_s": 1.0, "load_average": 0.5,
                        "flops": None if contender == "torchvision" else 2e11,
                        "loss": 1.0 if mode == "train" else None})  # fmt: skip
    return records

  monkeypatch.setattr(bench, "run_quickstart", quickstart)
  monkeypatch.setattr(bench, "precompile", precompile)
  monkeypatch.setattr(bench, "run_worker", run_worker)
  bench.main(["--device", "gpu", "--json", str(tmp_path / "gpu.json")])
  assert calls == [
    "prepare", "quickstart", "precompile",
    ("torchvision", 1), ("ours-det", 1), ("ours-segrpn", 1),
    ("torchvision", 8), ("ours-det", 8), ("ours-segrpn", 8),
  ]  # fmt: skip
  out = capsys.readouterr().out
  cells = lambda line: [c.strip() for c in line.strip("|").split("|")]
  tables = out.split("\nbatch ")[1:]
  assert [t.splitlines()[0] for t in tables] == [
    "1, float32", "1, bfloat16", "8, float32", "8, bfloat16"
  ]  # fmt: skip
  rows = {cells(line)[0]: cells(line) for line in tables[2].splitlines() if line.startswith("| o")}
  assert rows["ours-det"][1:3] == ["0.800", "0.50"]  # batch 8: 0.8 s against torchvision's 1.6
  assert rows["ours-segrpn"][1:3] == ["2.400", "1.50"]
  assert "failed: ours-segrpn train batch 8 bfloat16 round 1: XlaRuntimeError" in out
  assert "skipped" not in out
  assert "GPU: NVIDIA H200, 143771 MiB, 570.00" in out
  assert "quick start on the GPU" in out and "wall time 200 s" in out
  assert "mAP50 0.900, AR@1000 0.600, mIoU 0.700, mIoU* 0.950" in out and "x 1.000" not in out
  with open(tmp_path / "gpu.json") as f:
    saved = json.load(f)
  assert sorted(saved["summaries"]) == [
    "batch1_bfloat16", "batch1_float32", "batch8_bfloat16", "batch8_float32"
  ]  # fmt: skip
  assert len(saved["runs"]) == 23 and len(saved["compiled"]) == 16
  assert saved["quickstart"]["finished"] and saved["notes"] == ["note"]


def test_the_gpu_budget_skips_what_no_longer_fits(monkeypatch, tmp_path, capsys):
  monkeypatch.setattr(bench.tempfile, "tempdir", str(tmp_path))
  monkeypatch.setattr(bench, "prepare_gpu", lambda args: [])
  monkeypatch.setattr(bench, "gpu_model", lambda: "gpu")
  ran = []

  def run_worker(args, contender, modes, batch, dtypes, deadline):
    ran.append((contender, batch))
    return [{"contender": contender, "mode": m, "batch": batch, "dtype": d, "steps_s": [0.1],
             "first_s": 1.0, "load_average": 0.0, "flops": None, "loss": None}
            for d in dtypes for m in modes]  # fmt: skip

  monkeypatch.setattr(bench, "run_worker", run_worker)
  # Budget 30 s, shorter than a worker's guess (WORKER_GUESS_S): nothing starts.
  bench.main(["--device", "gpu", "--skip_quickstart", "--compile_jobs", "0", "--budget_s", "30",
              "--contenders", "ours-det"])  # fmt: skip
  assert ran == []
  out = capsys.readouterr().out
  assert out.count("skipped (--budget_s 30 s reached): ours-det") == 8
