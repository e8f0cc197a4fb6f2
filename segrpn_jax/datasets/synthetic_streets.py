"""synthetic_streets: procedural street scenes with Cityscapes-style labels, no download.

The embedded default dataset: every example is drawn on the fly by a scene generator
(`synthetic_scene`; `cityscapes_like_scene` for the cityscapes_like config) from a seed made of
(config seed, split, index), so a build is deterministic and needs nothing but NumPy and SciPy.
The features are those of `cityscapes_instances` (see `features.py`); images are stored as
JPEG (quality 90, no chroma subsampling, so small objects keep their colour) to keep the build
small and fast.

Builder configs (`synthetic_streets/<name>`):
  default          256x512, train 2000, validation 200 (the CPU training setting)
  res512x1024      512x1024, train 500, validation 100 (paper resolution, for benchmarks)
  tiny             64x128, train 8, validation 4 (tests)
  cityscapes_like  256x512, train 2000, validation CITYSCAPES_LIKE_VALIDATION: Cityscapes'
                   instance counts, sizes and clutter (docs/synthetic.md)
Other sizes: `SyntheticStreets(config=SyntheticStreetsConfig(name=..., height=..., ...))`.
"""

import dataclasses
import functools
import io
import multiprocessing
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from segrpn_jax.datasets import cityscapes_like_scene, features, synthetic_scene

JPEG_QUALITY = 90  # with 4:4:4 chroma; the error is about the size of the drawn noise
PARALLEL_MIN_EXAMPLES = 64  # smaller splits are drawn in-process (a pool costs more than it saves)
# Worker processes start fresh ("spawn"), never by os.fork(): the builder often runs inside a
# process where JAX's (or TensorFlow's) threads already run, and a forked child of a threaded
# process can deadlock.
POOL_START_METHOD = "spawn"
_SPLIT_CODES = {"train": 0, "validation": 1}  # part of each example's seed
SCENES = {
  "simple": synthetic_scene.generate_scene,
  "cityscapes_like": cityscapes_like_scene.generate_scene,
}
# Validation images of cityscapes_like: enough that the sampling error of mAP50 stays below half
# a point (docs/synthetic.md, "Validation size").
CITYSCAPES_LIKE_VALIDATION = 8000


@dataclasses.dataclass
class SyntheticStreetsConfig(tfds.core.BuilderConfig):
  """Resolution, split sizes and seed of a synthetic_streets variant.

  Attributes:
    height: Image height in pixels.
    width: Image width in pixels.
    num_train: Examples in the train split.
    num_validation: Examples in the validation split.
    seed: Base seed; example i of a split is drawn from (seed, split, i).
    scene: The generator, a key of SCENES: "simple" (flat-coloured shapes) or
      "cityscapes_like".
  """

  height: int = 256
  width: int = 512
  num_train: int = 2000
  num_validation: int = 200
  seed: int = 0
  scene: str = "simple"


def encode_jpeg(image_hxwx3: np.ndarray) -> bytes:
  """Encodes with PIL, which is faster than tfds' TF-graph encoder.

  Args:
    image_hxwx3: uint8 RGB image.

  Returns:
    The JPEG bytes (quality JPEG_QUALITY, 4:4:4), which tfds stores as they are.
  """
  buffer = io.BytesIO()
  Image.fromarray(image_hxwx3).save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
  return buffer.getvalue()


def make_split_example(config: SyntheticStreetsConfig, split: str, index: int) -> dict:
  """Draws example `index` of `split`, exactly as the builder stores it (image as JPEG bytes).

  Args:
    config: The builder config (resolution and seed).
    split: "train" or "validation".
    index: Position in the split.

  Returns:
    A dict matching `features.make_features()`.
  """
  rng = np.random.default_rng([config.seed, _SPLIT_CODES[split], index])
  scene = SCENES[config.scene](rng, config.height, config.width)
  return features.make_example(
    f"synthetic_{split}_{index:05d}",
    encode_jpeg(scene["image"]),
    scene["semantic"],
    scene["index_map"],
    scene["labels"],
    scene["crowd"],
  )


class SyntheticStreets(tfds.core.GeneratorBasedBuilder):
  """Procedural street scenes with semantic labels, instances and crowd groups."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}  # noqa: RUF012 (tfds reads a plain dict)
  BUILDER_CONFIGS = [  # noqa: RUF012
    SyntheticStreetsConfig(name="default", description="256x512, 2000 train, 200 validation"),
    SyntheticStreetsConfig(
      name="res512x1024",
      description="512x1024, 500 train, 100 validation",
      height=512,
      width=1024,
      num_train=500,
      num_validation=100,
    ),
    SyntheticStreetsConfig(
      name="cityscapes_like",
      description=(
        f"256x512, 2000 train, {CITYSCAPES_LIKE_VALIDATION} validation: Cityscapes' instance "
        "counts, sizes and clutter"
      ),
      version=tfds.core.Version("1.0.0"),
      release_notes={"1.0.0": "First release."},
      num_validation=CITYSCAPES_LIKE_VALIDATION,
      scene="cityscapes_like",
    ),
    SyntheticStreetsConfig(
      name="tiny",
      description="64x128, 8 train, 4 validation (tests)",
      height=64,
      width=128,
      num_train=8,
      num_validation=4,
    ),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=__doc__,
      features=features.make_features(image_encoding="jpeg"),
      supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {
      "train": self._generate_examples("train", self.builder_config.num_train),
      "validation": self._generate_examples("validation", self.builder_config.num_validation),
    }

  def _generate_examples(self, split, num_examples):
    make = functools.partial(make_split_example, self.builder_config, split)
    workers = _num_workers(num_examples)
    if workers == 1:
      for index in range(num_examples):
        yield index, make(index)
      return
    # Drawing dominates the build; worker processes draw, this one writes. Every example
    # depends only on its own seed, so the result does not depend on the worker count.
    with multiprocessing.get_context(POOL_START_METHOD).Pool(workers) as pool:
      yield from enumerate(pool.imap(make, range(num_examples), chunksize=8))


def _num_workers(num_examples: int) -> int:
  """Drawing processes for a split: the usable cores (at most 8) for large splits."""
  if num_examples < PARALLEL_MIN_EXAMPLES:
    return 1
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(cores or 1, 8))
