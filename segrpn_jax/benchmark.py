"""What the speed benchmarks share: the paper-size config of each benchmarked model, a random
batch with the input pipeline's contract, the jitted train step and inference of a config, and
warm timings.

A benchmark must not depend on a dataset being prepared, so `random_batch` draws one: boxes of
every FPN scale, their instance masks and semantic labels (rectangles of random trainIds), with
the dtypes and shapes of docs/architecture.md's batch contract. The work done per step depends
on the shapes (and, through NMS and sampling, slightly on the values), not on the images looking
like streets. This module imports no dataset code, so no TensorFlow: it runs wherever JAX, flax,
optax, orbax and ml_collections do (a GPU machine without TensorFlow, say).
"""

import functools
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np

from segrpn_jax import api
from segrpn_jax import state as state_lib
from segrpn_jax.configs import baseline, case1

# The benchmarked models: name -> what it is.
MODELS = {
  "segrpn": "configs/case1.py: SegRPN, class-agnostic module, RPN_mask, roi+rpn fusion",
  "baseline": "configs/baseline.py: Faster R-CNN with the semantic head",
  "det": "configs/baseline.py without the semantic head: a plain Faster R-CNN",
}


def paper_config(
  model: str = "segrpn",
  size: tuple[int, int] = (512, 1024),
  batch_size: int = 1,
  dtype: str = "float32",
  backbone: str = "resnet50",
) -> ml_collections.ConfigDict:
  """The paper-size config of a benchmarked model, with random weights (no weights file).

  Args:
    model: a key of MODELS.
    size: (height, width) of the images; the paper's is 512x1024.
    batch_size: images per step, train and evaluation alike.
    dtype: compute dtype, float32 or bfloat16.
    backbone: resnet18 | resnet34 | resnet50 | resnet101.

  Returns:
    The config: every other key as the paper setting has it.
  """
  if model not in MODELS:
    raise ValueError(f"unknown benchmark model {model!r}; one of {', '.join(MODELS)}.")
  config = case1.get_config() if model == "segrpn" else baseline.get_config()
  if model == "det":
    config.model.semantic_head = False
  config.model.backbone = backbone
  config.model.pretrained = ""  # random weights: the timing does not depend on their values
  config.model.dtype = dtype
  config.data.image_size = tuple(size)
  config.train.batch_size = config.eval.batch_size = batch_size
  return config


def random_batch(
  config: ml_collections.ConfigDict, batch_size: int, seed: int = 0, size=None
) -> dict:
  """A training batch of `batch_size` images (docs' batch contract).

  Args:
    config: the experiment config (image size, max_instances).
    batch_size: images in the batch.
    seed: NumPy seed.
    size: (height, width) of the images; default config.data.image_size. A config that trains
      on crops needs `state.train_image_size(config)` for `train_step_fn`'s step.

  Returns:
    {'image', 'semantic', 'instance_map', 'crowd', 'boxes', 'classes', 'valid', 'example_mask'}
    with up to half of max_instances rectangles per image, sides from 8 px to half the image.
  """
  rng = np.random.RandomState(seed)
  height, width = size or config.data.image_size
  n = config.data.max_instances
  batch = {
    "image": rng.randn(batch_size, height, width, 3).astype(np.float32),
    "semantic": np.zeros((batch_size, height, width), np.int32),  # road
    "instance_map": np.zeros((batch_size, height, width), np.int32),
    "crowd": np.zeros((batch_size, height, width), bool),
    "boxes": np.zeros((batch_size, n, 4), np.float32),
    "classes": np.zeros((batch_size, n), np.int32),
    "valid": np.zeros((batch_size, n), bool),
    "example_mask": np.ones((batch_size,), bool),
  }
  for b in range(batch_size):
    count = max(1, n // 2)
    sides = np.exp(rng.uniform(np.log(8), np.log(min(height, width) / 2), size=(count, 2)))
    for i, (h, w) in enumerate(sides):
      y1, x1 = rng.uniform(0, height - h), rng.uniform(0, width - w)
      box = np.array([x1, y1, x1 + w, y1 + h], np.float32)
      cls = rng.randint(1, config.model.num_classes + 1)
      ys, xs = slice(int(y1), int(np.ceil(y1 + h))), slice(int(x1), int(np.ceil(x1 + w)))
      batch["instance_map"][b, ys, xs] = i + 1
      batch["semantic"][b, ys, xs] = rng.randint(config.model.num_semantic_classes)
      batch["boxes"][b, i], batch["classes"][b, i], batch["valid"][b, i] = box, cls, True
  return batch


def train_step_fn(config: ml_collections.ConfigDict) -> tuple[Callable, state_lib.TrainState]:
  """(the jitted `state.train_step`, state donated, and an initial state on the default device)."""
  model = state_lib.create_model(config, state_lib.train_image_size(config))
  state = state_lib.init_state(config, jax.random.key(config.seed))
  step = functools.partial(state_lib.train_step, model=model, config=config)
  return jax.jit(step, donate_argnums=0), state


def inference_fn(config: ml_collections.ConfigDict, fusion: str | None = None) -> Callable:
  """A function images -> predictions (`api.predict`, jitted inside) with random weights."""
  model = state_lib.create_model(config)
  variables = state_lib.init_variables(config, jax.random.key(config.seed))
  fusion = fusion or config.model.fusion.inference
  return functools.partial(api.predict, model, variables, fusion=fusion)


def time_calls(
  fn: Callable[[], object], repeats: int, warmup: int = 1
) -> tuple[float, list[float]]:
  """(seconds of the first call, including compilation; seconds of each of `repeats` warm calls).

  Every call's outputs are waited for (`jax.block_until_ready`).
  """
  start = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - start
  for _ in range(warmup - 1):
    jax.block_until_ready(fn())
  warm = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    warm.append(time.perf_counter() - start)
  return first, warm


def xla_flops(compiled) -> float | None:
  """FLOPs of a compiled JAX program as XLA counts them, None where it gives no count."""
  try:
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):  # older JAX: one dict per program
      cost = cost[0] if cost else {}
    flops = float(cost.get("flops", 0.0))
  except Exception:  # a backend without cost analysis
    return None
  return flops if flops > 0 else None
