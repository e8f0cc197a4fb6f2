"""A picture of a SegRPN dataset's examples (docs/synthetic_samples*.png).

  python scripts/dataset_samples.py [--dataset=synthetic_streets] [--split=train]
      [--num_images=3] [--first=0] [--output=docs/synthetic_samples.png] [--nogenerate]
      [--data_dir=DIR]

  python scripts/dataset_samples.py --dataset=synthetic_streets/cityscapes_like \\
      --output=docs/synthetic_samples_cityscapes_like.png

One row per example: the image, the semantic map (Cityscapes colours, ignore black) and the
instances (one colour each, crowd regions white, boxes in their class colour). synthetic_streets
examples are drawn directly, exactly as the builder stores them (JPEG image included), so no
build is needed; --nogenerate reads a built split instead (Cityscapes: always). The picture is
stored with a 256-colour palette (small hues shift slightly) to stay below 300 KB.

The split's statistics: python -m segrpn_jax.datasets.statistics --dataset=... --split=...
"""

import io

import numpy as np
import tensorflow_datasets as tfds
from absl import app, flags
from PIL import Image, ImageDraw

import segrpn_jax.datasets  # noqa: F401  (registers the builders)
from segrpn_jax.datasets import labels, synthetic_streets

GAP = 4  # pixels between the panels

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "synthetic_streets", "tfds name[/config]")
flags.DEFINE_string("data_dir", None, "tfds data_dir (only with --nogenerate)")
flags.DEFINE_string("split", "train", "split to show")
flags.DEFINE_integer("num_images", 3, "rows of the picture")
flags.DEFINE_integer("first", 0, "index of the first example shown")
flags.DEFINE_string("output", "docs/synthetic_samples.png", "PNG to write")
flags.DEFINE_bool("generate", True, "draw synthetic_streets examples directly (no build)")


def _semantic_panel(semantic):
  return labels.train_id_colors()[semantic]  # ignore (255) is black


def _instance_panel(example):
  instance_map = example["instance_map"]
  palette = np.random.default_rng(0).integers(40, 256, (int(instance_map.max()) + 1, 3))
  panel = np.where((instance_map > 0)[..., None], palette[instance_map], 40)
  panel[example["crowd"]] = 255
  picture = Image.fromarray(panel.astype(np.uint8))
  draw = ImageDraw.Draw(picture)
  height, width = instance_map.shape
  thing_colours = labels.train_id_colors()[labels.THING_TRAIN_ID_OFFSET + 1 :]
  for bbox, label in zip(example["instances"]["bbox"], example["instances"]["label"], strict=True):
    ymin, xmin, ymax, xmax = bbox * [height, width, height, width]
    colour = tuple(int(c) for c in thing_colours[label])
    draw.rectangle([xmin, ymin, xmax - 1, ymax - 1], outline=colour, width=1)
    if (xmax - xmin) * (ymax - ymin) >= 900:
      draw.text((xmin + 3, ymin + 2), labels.THING_NAMES[label], fill=(255, 255, 255))
  return np.asarray(picture)


def sample_grid(examples: list[dict]) -> np.ndarray:
  """Rows of [image | semantic overlay | instances] for the given decoded examples."""
  rows = []
  for example in examples:
    image = example["image"]
    semantic = _semantic_panel(example["semantic"][..., 0])
    gap = np.full((image.shape[0], GAP, 3), 255, np.uint8)
    rows.append(np.concatenate([image, gap, semantic, gap, _instance_panel(example)], axis=1))
    rows.append(np.full((GAP, rows[-1].shape[1], 3), 255, np.uint8))
  return np.concatenate(rows[:-1], axis=0)


def _decode(encoded: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(encoded)))


def generated_examples(config, split: str, indices) -> list[dict]:
  """Examples drawn as the builder stores them, decoded as tfds would decode them."""
  examples = []
  for index in indices:
    example = synthetic_streets.make_split_example(config, split, index)
    example["image"] = _decode(example["image"])
    example["semantic"] = _decode(example["semantic"])[..., None]
    examples.append(example)
  return examples


def main(argv):
  del argv
  builder = tfds.builder(FLAGS.dataset, data_dir=FLAGS.data_dir)
  indices = range(FLAGS.first, FLAGS.first + FLAGS.num_images)
  if FLAGS.generate and builder.name == "synthetic_streets":
    examples = generated_examples(builder.builder_config, FLAGS.split, indices)
  else:
    builder.download_and_prepare()
    dataset = builder.as_dataset(split=FLAGS.split).skip(FLAGS.first).take(FLAGS.num_images)
    examples = list(tfds.as_numpy(dataset))
  grid = Image.fromarray(sample_grid(examples))
  grid.quantize(256, method=Image.Quantize.MEDIANCUT).save(FLAGS.output, optimize=True)
  print(f"wrote {FLAGS.output}")


if __name__ == "__main__":
  app.run(main)
