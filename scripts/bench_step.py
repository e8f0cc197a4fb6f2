"""Train-step and inference time, and peak device memory, per dtype and batch size.

  python scripts/bench_step.py                                  # SegRPN case1 R50, 512x1024
  python scripts/bench_step.py --dtype float32 bfloat16 --batch 1 8 --repeats 10   # on a GPU
  python scripts/bench_step.py --model det --size 256x512 --batch 1

Each (dtype, batch) runs in a process of its own, so that the peak memory it reports is its own:
inference first (`api.predict` under the config's inference fusion), then the train step
(`state.train_step`: forward, backward, optimizer update, state donated). Memory: XLA's memory
analysis of each compiled program (arguments + outputs - donated + temporaries: what one call
needs), and the allocator's `peak_bytes_in_use` at the end (it also counts the scratch buffers
of compilation and autotuning; the CPU reports none). Times are warm medians of `--repeats`
calls, after one call that compiles.
Random weights and a random batch (`segrpn_jax.benchmark`): no dataset is read, and nothing but
JAX, flax, optax, orbax and ml_collections is imported.
"""

import argparse
import functools
import json
import subprocess
import sys
import tempfile

import jax
import numpy as np

from segrpn_jax import benchmark

MODELS = ("segrpn", "det")  # of segrpn_jax.benchmark.MODELS


def program_gib(jitted, *args, **kwargs) -> float | None:
  """Device memory of one call of a compiled program (XLA's memory analysis), in GiB.

  Arguments + outputs - donated (aliased) buffers + temporaries: what one call needs, without
  the compile-time scratch that the allocator's peak also counts. With the persistent
  compilation cache of `measure`, the compile here is a cache hit.
  """
  analysis = jitted.lower(*args, **kwargs).compile().memory_analysis()
  if analysis is None:
    return None
  total = analysis.argument_size_in_bytes + analysis.output_size_in_bytes
  return (total - analysis.alias_size_in_bytes + analysis.temp_size_in_bytes) / 2**30


def peak_gib() -> float | None:
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return None if peak is None else peak / 2**30


def measure(model: str, size: tuple[int, int], batch: int, dtype: str, repeats: int) -> dict:
  """Inference then train-step timings and peaks of one configuration, in this process."""
  # The memory analysis compiles each program again: let that be a cache hit.
  jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="bench_step_cache_"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  config = benchmark.paper_config(model, size, batch, dtype)
  data = benchmark.random_batch(config, batch)
  result = {"model": model, "dtype": dtype, "batch": batch, "device": jax.devices()[0].device_kind}

  infer = functools.partial(benchmark.inference_fn(config), data["image"])
  first, warm = benchmark.time_calls(infer, repeats)
  result.update(infer_compile_s=first, infer_s=float(np.median(warm)), infer_peak_gib=peak_gib())
  # `infer` is api.predict with its arguments bound (functools.partial flattens the two).
  result["infer_program_gib"] = program_gib(infer.func, *infer.args, **infer.keywords)

  step, state = benchmark.train_step_fn(config)
  holder = [state]

  def run_step():
    holder[0], metrics = step(holder[0], data)
    return metrics

  first, warm = benchmark.time_calls(run_step, repeats)
  result.update(train_compile_s=first, train_s=float(np.median(warm)), train_peak_gib=peak_gib())
  result["train_program_gib"] = program_gib(step, holder[0], data)
  return result


def _gib(value) -> str:
  return "n/a" if value is None else f"{value:.1f}"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="segrpn", choices=MODELS)
  parser.add_argument("--size", default="512x1024", help="HxW")
  parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
  parser.add_argument("--batch", nargs="+", type=int, default=[1])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--json", help="also append each result as a JSON line to this file")
  parser.add_argument("--worker", help=argparse.SUPPRESS)  # "dtype,batch": measure in-process
  args = parser.parse_args()
  size = tuple(int(v) for v in args.size.split("x"))

  if args.worker:
    dtype, batch = args.worker.split(",")
    print(json.dumps(measure(args.model, size, int(batch), dtype, args.repeats)))
    return

  print(f"{args.model} ({benchmark.MODELS[args.model]}), ResNet-50, {size[0]}x{size[1]}, "
        "random weights")  # fmt: skip
  print(
    "| dtype | batch | train step s | inference s | train program GiB | inference program GiB "
    "| allocator peak GiB |"
  )
  print("|---|---|---|---|---|---|---|")
  for dtype in args.dtype:
    for batch in args.batch:
      argv = [sys.argv[0], f"--model={args.model}", f"--size={args.size}"]
      argv += [f"--repeats={args.repeats}", f"--worker={dtype},{batch}"]
      done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, check=False)
      if done.returncode != 0:
        cause = (done.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"| {dtype} | {batch} | failed: {cause} | | | | |", flush=True)
        continue
      r = json.loads(done.stdout.strip().splitlines()[-1])
      print(
        f"| {dtype} | {batch} | {r['train_s']:.4f} | {r['infer_s']:.4f} | "
        f"{_gib(r['train_program_gib'])} | {_gib(r['infer_program_gib'])} | "
        f"{_gib(r['train_peak_gib'])} |",
        flush=True,
      )
      if args.json:
        with open(args.json, "a") as f:
          f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
  main()
