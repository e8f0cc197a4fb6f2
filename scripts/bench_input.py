"""Images per second of the input pipeline (decode, resize, flip, normalise, pad, batch).

  python scripts/bench_input.py [--dataset synthetic_streets/res512x1024] [--data_dir DIR]
      [--image_size 512,1024] [--batch_size 2] [--batches 200] [--warmup 20] [--eval_passes 1]
  python scripts/bench_input.py --cityscapes_release 24 [--release_size 1024,2048]
      [--manual_dir DIR]                      # a Cityscapes-format release, 1024x2048 PNGs
  taskset -c 0 python scripts/bench_input.py --cityscapes_release 24   # on one core

Builds the dataset first if it is not prepared (not timed). Times the training iterator (with
shuffling and random flips) and `--eval_passes` passes of the evaluation dataset, on the host
only: the NumPy batches are produced and dropped, nothing goes to a device. The default reads
synthetic_streets built at 512x1024 (the paper's input size, no resizing needed);
`--dataset synthetic_streets` reads the 256x512 build and resizes it up instead.

`--cityscapes_release N` writes an N-frame release with `segrpn_jax.datasets.fake_cityscapes`
(the builder test's drawing, at `--release_size`; N - N // 2 train frames, N // 2 val frames;
images 2.2 MB PNGs at 1024x2048, as Cityscapes'), into `--manual_dir` or a temporary folder,
and builds `cityscapes_instances` from it into `--data_dir` or a temporary folder (a data_dir
that already holds cityscapes_instances is read as it is). The pipeline then decodes the
release's PNGs and resizes them to `--image_size`, as it does for the real dataset.

Cores: the rates are divided by the CPU cores this process may run on
(`os.sched_getaffinity`), so `taskset` sets them. Images per CPU-second divides by the CPU time
the process used in the timed part (all its threads): on cores that other work shares, it is
closer to what one core does alone than images/s per core. TensorFlow sizes its thread pools
(inter-op, which runs tf.data's parallel map, and intra-op) from the same affinity mask; the
script also sets both to that count before TensorFlow starts, so that AUTOTUNE never plans for
more cores.
The load average of the machine is printed before and after: other work on the cores makes the
rates lower bounds.
"""

import argparse
import itertools
import os
import pathlib
import tempfile
import time

import jax
import tensorflow as tf
import tensorflow_datasets as tfds

from segrpn_jax import input_pipeline
from segrpn_jax.configs import default
from segrpn_jax.datasets import fake_cityscapes


def usable_cores() -> int:
  """CPU cores this process may run on (its affinity mask; all of them where there is none)."""
  return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def size_thread_pools(cores: int) -> str:
  """Sets TensorFlow's inter-op and intra-op pools to `cores` threads; says what it did."""
  try:
    tf.config.threading.set_inter_op_parallelism_threads(cores)
    tf.config.threading.set_intra_op_parallelism_threads(cores)
  except RuntimeError:  # TensorFlow already started in this process (a test calling main)
    return "TensorFlow's thread pools: already started, left as they are"
  return f"TensorFlow's inter-op and intra-op thread pools: {cores} threads each"


def _timed(count_images) -> tuple[int, float, float]:
  """(images counted, wall seconds, CPU seconds of this process, all threads) of one call."""
  wall, cpu = time.perf_counter(), time.process_time()
  images = count_images()
  return images, time.perf_counter() - wall, time.process_time() - cpu


def _report(what: str, images: int, wall: float, cpu: float, cores: int, detail: str) -> None:
  rate, per_cpu_second = images / wall, images / max(cpu, 1e-9)
  print(
    f"{what}: {rate:.1f} images/s, {rate / cores:.1f} per core, {per_cpu_second:.1f} images per "
    f"CPU-second ({cpu:.1f} s of CPU in {wall:.1f} s), over {detail}"
  )


def write_cityscapes_release(num_frames: int, size: tuple[int, int], manual_dir: str) -> float:
  """Writes `num_frames` frames of fake_cityscapes into `manual_dir`; returns the seconds taken."""
  if num_frames < 2:
    raise SystemExit(f"--cityscapes_release={num_frames}: give at least 2 (one train, one val).")
  start = time.perf_counter()
  frames = fake_cityscapes.release_frames(num_frames - num_frames // 2, num_frames // 2)
  fake_cityscapes.write_release(manual_dir, frames, *size, seed=0)
  return time.perf_counter() - start


def _parse_size(text: str, flag: str) -> tuple[int, int]:
  try:
    height, width = (int(s) for s in text.split(","))
  except ValueError:
    raise SystemExit(f"{flag}={text!r}: give HEIGHT,WIDTH, e.g. 512,1024.") from None
  return height, width


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="synthetic_streets/res512x1024")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--image_size", default="512,1024")
  parser.add_argument("--batch_size", type=int, default=2)
  parser.add_argument("--batches", type=int, default=200)
  parser.add_argument("--warmup", type=int, default=20)
  parser.add_argument("--eval_passes", type=int, default=1)
  parser.add_argument("--cityscapes_release", type=int, default=0, metavar="N")
  parser.add_argument("--release_size", default="1024,2048")
  parser.add_argument("--manual_dir", default=None)
  args = parser.parse_args(argv)

  tfds.disable_progress_bar()
  cores = usable_cores()
  print(size_thread_pools(cores))
  print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  config = default.get_config()
  config.data.dataset = args.dataset
  config.data.data_dir = args.data_dir
  config.data.manual_dir = None
  config.data.image_size = _parse_size(args.image_size, "--image_size")
  config.train.batch_size = config.eval.batch_size = args.batch_size
  with tempfile.TemporaryDirectory(prefix="bench_input_") as scratch:
    if args.cityscapes_release:
      release_size = _parse_size(args.release_size, "--release_size")
      config.data.dataset = "cityscapes_instances"
      config.data.manual_dir = args.manual_dir or str(pathlib.Path(scratch) / "release")
      config.data.data_dir = args.data_dir or str(pathlib.Path(scratch) / "tensorflow_datasets")
      seconds = write_cityscapes_release(
        args.cityscapes_release, release_size, config.data.manual_dir
      )
      print(
        f"fake_cityscapes: {args.cityscapes_release} frames of {release_size[0]}x"
        f"{release_size[1]} written to {config.data.manual_dir} in {seconds:.1f} s"
      )
    start = time.perf_counter()
    builder = input_pipeline.get_builder(config)
    print(f"dataset ready in {time.perf_counter() - start:.1f} s (not timed below)")
    builder_config = builder.builder_config
    stored = f"{builder_config.height}x{builder_config.width}" if builder_config else "as released"
    print(
      f"{builder.info.full_name}: stored {stored} -> {config.data.image_size}, "
      f"batch {args.batch_size}, {jax.process_count()} process(es), {cores} usable CPU cores"
    )

    train = input_pipeline.create_train_iterator(config, builder=builder)
    for _ in itertools.islice(train, args.warmup):
      pass
    batches = itertools.islice(train, args.batches)
    measured = _timed(lambda: args.batch_size * sum(1 for _ in batches))
    _report("train iterator", *measured, cores, f"{args.batches} batches")

    eval_data = input_pipeline.create_eval_dataset(config, builder=builder)
    measured = _timed(
      lambda: sum(
        int(batch["example_mask"].sum()) for _ in range(args.eval_passes) for batch in eval_data
      )
    )
    _report("eval pass", *measured, cores, f"{measured[0]} images ({args.eval_passes} pass(es))")
  print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
  main()
