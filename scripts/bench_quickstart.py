"""Train-step time of the quick start's config against variants of it, as same-machine ratios.

  python scripts/bench_quickstart.py --variant model.width_multiplier=0.375
  python scripts/bench_quickstart.py --rounds 3 --repeats 6 \\
      --variant model.class_agnostic_channels=16 \\
      --variant "data.train_crop_size=(128,256) train.batch_size=8"

The reference is `configs/case1.py:synthetic` as it is (the README's quick start); each
`--variant` is a space-separated list of KEY=VALUE overrides of it (VALUE read as a Python
literal, else as a string). Each (variant, round) runs in a process of its own: it compiles the
jitted `state.train_step` of its config (`segrpn_jax.benchmark.train_step_fn`) on a random batch
of the config's training size and batch (`benchmark.random_batch`), makes one warm-up call and
times `--repeats` calls. The rounds alternate the configs, so that a slow spell of a shared
machine hits each of them; the table gives each config's median over all its timed calls, the
time per training image and the ratio to the reference's step (below 1 is faster). No dataset is
read: the step's time does not depend on the pixels.
"""

import argparse
import ast
import json
import subprocess
import sys

import numpy as np

REFERENCE = "quick start"


def parse_overrides(text: str) -> dict:
  """'a.b=1 c=(2,3)' -> {'a.b': 1, 'c': (2, 3)}; a value that is no Python literal is a str."""
  overrides = {}
  for item in text.split():
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise SystemExit(f"--variant {text!r}: {item!r} is not KEY=VALUE, e.g. train.batch_size=8")
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[key] = value
  return overrides


def quick_start_config(overrides: dict):
  """configs/case1.py:synthetic with the overrides applied (each key must exist)."""
  from segrpn_jax.configs import case1

  config = case1.get_config("synthetic")
  for key, value in overrides.items():
    *path, name = key.split(".")
    node = config
    for part in path:
      node = node.get(part)
      if not hasattr(node, "keys"):
        break
    if not hasattr(node, "keys") or name not in node:
      raise SystemExit(f"--variant: config has no key {key!r} (see segrpn_jax/configs/default.py)")
    node[name] = value
  return config


def measure(overrides: dict, repeats: int) -> dict:
  """Warm train-step times of one config, in this process."""
  from segrpn_jax import benchmark
  from segrpn_jax import state as state_lib

  config = quick_start_config(overrides)
  step, state = benchmark.train_step_fn(config)
  size = state_lib.train_image_size(config)
  data = benchmark.random_batch(config, config.train.batch_size, size=size)
  holder = [state]

  def run_step():
    holder[0], metrics = step(holder[0], data)
    return metrics

  first, warm = benchmark.time_calls(run_step, repeats)
  return {
    "compile_s": first,
    "times": [float(t) for t in warm],
    "batch": config.train.batch_size,
    "size": size,
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variant", action="append", default=[], help="'KEY=VALUE [KEY=VALUE...]'")
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=6)
  parser.add_argument("--json", help="also write the results to this file")
  parser.add_argument("--worker", help=argparse.SUPPRESS)  # the overrides, measured in-process
  args = parser.parse_args()
  if args.worker is not None:
    print(json.dumps(measure(parse_overrides(args.worker), args.repeats)))
    return

  variants = {REFERENCE: "", **{v: v for v in args.variant}}
  for text in args.variant:
    quick_start_config(parse_overrides(text))  # a wrong key fails before anything runs
  results = {name: {"times": []} for name in variants}
  for round_ in range(args.rounds):
    for name, text in variants.items():
      argv = [sys.executable, sys.argv[0], f"--worker={text}", f"--repeats={args.repeats}"]
      done = subprocess.run(argv, capture_output=True, text=True, check=False)
      if done.returncode != 0:
        cause = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"{name!r}, round {round_ + 1} failed: {cause}")
      r = json.loads(done.stdout.strip().splitlines()[-1])
      results[name]["times"] += r["times"]
      results[name].update(batch=r["batch"], size=r["size"])
      results[name].setdefault("round_medians", []).append(float(np.median(r["times"])))
      print(f"round {round_ + 1} {name}: {np.median(r['times']):.3f} s", flush=True)

  reference = float(np.median(results[REFERENCE]["times"]))
  print("\n| config | train size, batch | step median s | per image s | x quick start |")
  print("|---|---|---|---|---|")
  for name, r in results.items():
    median = float(np.median(r["times"]))
    r.update(median_s=median, ratio=median / reference)
    size = "x".join(str(s) for s in r["size"])
    print(
      f"| {name} | {size}, {r['batch']} | {median:.3f} | {median / r['batch']:.4f} | "
      f"{median / reference:.2f} |"
    )
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
