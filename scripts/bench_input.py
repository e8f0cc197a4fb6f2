"""Images per second of the input pipeline (decode, resize, flip, normalise, pad, batch).

  python scripts/bench_input.py [--dataset synthetic_streets/res512x1024] [--data_dir DIR]
      [--image_size 512,1024] [--batch_size 2] [--batches 200] [--warmup 20]

Builds the dataset first if it is not prepared (not timed). Times the training iterator (with
shuffling and random flips) and one pass of the evaluation dataset, on the host only: the
NumPy batches are produced and dropped, nothing goes to a device. The default reads
synthetic_streets built at 512x1024 (the paper's input size, no resizing needed);
`--dataset synthetic_streets` reads the 256x512 build and resizes it up instead.
"""

import argparse
import itertools
import os
import time

import jax

from segrpn_jax import input_pipeline
from segrpn_jax.configs import default


def _images_per_second(batches, num_batches, warmup, batch_size):
  for _ in itertools.islice(batches, warmup):
    pass
  start = time.perf_counter()
  count = sum(1 for _ in itertools.islice(batches, num_batches))
  return count * batch_size / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="synthetic_streets/res512x1024")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--image_size", default="512,1024")
  parser.add_argument("--batch_size", type=int, default=2)
  parser.add_argument("--batches", type=int, default=200)
  parser.add_argument("--warmup", type=int, default=20)
  args = parser.parse_args()

  config = default.get_config()
  config.data.dataset = args.dataset
  config.data.data_dir = args.data_dir
  config.data.manual_dir = None
  config.data.image_size = tuple(int(s) for s in args.image_size.split(","))
  config.train.batch_size = config.eval.batch_size = args.batch_size
  builder = input_pipeline.get_builder(config)
  builder_config = builder.builder_config
  stored = f"{builder_config.height}x{builder_config.width}" if builder_config else "as released"
  print(
    f"{builder.info.full_name}: stored {stored} -> {config.data.image_size}, "
    f"batch {args.batch_size}, {jax.process_count()} process(es), "
    f"{len(os.sched_getaffinity(0))} usable CPU cores"
  )

  train = input_pipeline.create_train_iterator(config, builder=builder)
  rate = _images_per_second(train, args.batches, args.warmup, args.batch_size)
  print(f"train iterator: {rate:.1f} images/s over {args.batches} batches")

  eval_data = input_pipeline.create_eval_dataset(config, builder=builder)
  start = time.perf_counter()
  count = sum(int(batch["example_mask"].sum()) for batch in eval_data)
  print(f"eval pass: {count / (time.perf_counter() - start):.1f} images/s over {count} images")


if __name__ == "__main__":
  main()
