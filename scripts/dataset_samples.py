"""A picture and the statistics of a SegRPN dataset (synthetic_streets by default).

  python scripts/dataset_samples.py [--dataset synthetic_streets] [--data_dir DIR]
      [--split train] [--num_images 4] [--output docs/synthetic_samples.png]

The PNG has one row per example: the image, the semantic map (Cityscapes colours) over it, and
the instances (one colour each, crowd regions white, boxes in their class colour with the class
name). The statistics cover the whole split at its stored resolution: instances per image, per
class, crowd, and the histogram of box sides over the FPN levels of every scale case of
docs/architecture.md, with the thresholds scaled by size_scale = H / 512 as the model does.
"""

import argparse
import collections

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

import segrpn_jax.datasets  # noqa: F401  (registers the builders)
from segrpn_jax.datasets import labels
from segrpn_jax.ops import scale

GAP = 4  # pixels between the panels


def _semantic_panel(image, semantic):
  colours = labels.train_id_colors()[semantic].astype(np.float32)
  blend = 0.35 * image + 0.65 * colours
  return np.where((semantic == labels.IGNORE_LABEL)[..., None], image, blend).astype(np.uint8)


def _instance_panel(example):
  image, instance_map = example["image"], example["instance_map"]
  palette = np.random.default_rng(0).integers(40, 256, (instance_map.max() + 1, 3))
  panel = np.where((instance_map > 0)[..., None], palette[instance_map], image // 3)
  panel[example["crowd"]] = 255
  picture = Image.fromarray(panel.astype(np.uint8))
  draw = ImageDraw.Draw(picture)
  height, width = instance_map.shape
  thing_colours = labels.train_id_colors()[labels.THING_TRAIN_ID_OFFSET + 1 :]
  for bbox, label in zip(example["instances"]["bbox"], example["instances"]["label"], strict=True):
    ymin, xmin, ymax, xmax = bbox * [height, width, height, width]
    colour = tuple(int(c) for c in thing_colours[label])
    draw.rectangle([xmin, ymin, xmax - 1, ymax - 1], outline=colour, width=2)
    if (xmax - xmin) * (ymax - ymin) >= 400:
      draw.text((xmin + 3, ymin + 2), labels.THING_NAMES[label], fill=(255, 255, 255))
  return np.asarray(picture)


def sample_grid(examples: list[dict]) -> np.ndarray:
  """Rows of [image | semantic overlay | instances] for the given decoded examples."""
  rows = []
  for example in examples:
    image = example["image"]
    semantic = _semantic_panel(image.astype(np.float32), example["semantic"][..., 0])
    gap = np.full((image.shape[0], GAP, 3), 255, np.uint8)
    rows.append(np.concatenate([image, gap, semantic, gap, _instance_panel(example)], axis=1))
    rows.append(np.full((GAP, rows[-1].shape[1], 3), 255, np.uint8))
  return np.concatenate(rows[:-1], axis=0)


def split_statistics(builder: tfds.core.DatasetBuilder, split: str) -> dict:
  """Counts over one split: instances per image and class, crowd, box sides per case level."""
  decoders = {"image": tfds.decode.SkipDecoding(), "semantic": tfds.decode.SkipDecoding()}
  per_image, classes, sides, crowd_images, crowd_pixels, pixels = [], [], [], 0, 0, 0
  height = None
  for example in tfds.as_numpy(builder.as_dataset(split=split, decoders=decoders)):
    height, width = example["instance_map"].shape
    bbox = example["instances"]["bbox"] * [height, width, height, width]
    per_image.append(len(bbox))
    classes += example["instances"]["label"].tolist()
    sides.append(np.sqrt((bbox[:, 2] - bbox[:, 0]) * (bbox[:, 3] - bbox[:, 1])))
    crowd_images += bool(example["crowd"].any())
    crowd_pixels += int(example["crowd"].sum())
    pixels += height * width
  sides = np.concatenate(sides)
  boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=1)
  levels = {
    case: np.asarray(scale.level_membership(boxes, case, size_scale=height / 512)).sum(axis=0)
    for case in ("case1", "case2", "case3")
  }
  return {
    "images": len(per_image),
    "height": height,
    "per_image": np.array(per_image),
    "classes": collections.Counter(classes),
    "sides": sides,
    "levels": levels,
    "crowd_images": crowd_images,
    "crowd_fraction": crowd_pixels / pixels,
  }


def print_statistics(stats: dict, split: str) -> None:
  per_image = stats["per_image"]
  print(f"split {split}: {stats['images']} images of height {stats['height']}")
  print(
    f"instances per image: mean {per_image.mean():.2f}, median {np.median(per_image):.0f}, "
    f"min {per_image.min()}, max {per_image.max()}, total {per_image.sum()}"
  )
  counts = np.bincount(per_image)
  print("  histogram (count: images): " + ", ".join(f"{n}: {c}" for n, c in enumerate(counts) if c))
  total = sum(stats["classes"].values())
  print(
    "per class: "
    + ", ".join(
      f"{name} {stats['classes'][i]} ({100 * stats['classes'][i] / total:.1f}%)"
      for i, name in enumerate(labels.THING_NAMES)
    )
  )
  print(
    f"crowd: {stats['crowd_images']} images ({100 * stats['crowd_images'] / stats['images']:.1f}%),"
    f" {100 * stats['crowd_fraction']:.2f}% of all pixels"
  )
  sides = stats["sides"]
  print(
    f"box side sqrt(wh) in pixels: min {sides.min():.1f}, median {np.median(sides):.1f}, "
    f"max {sides.max():.1f} (size_scale {stats['height'] / 512:g})"
  )
  for case, counts in stats["levels"].items():
    cells = ", ".join(
      f"L{level} {n} ({100 * n / len(sides):.1f}%)"
      for level, n in zip(range(2, 7), counts, strict=True)
    )
    print(f"  {case}: {cells}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--dataset", default="synthetic_streets")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--split", default="train")
  parser.add_argument("--num_images", type=int, default=4)
  parser.add_argument("--output", default="docs/synthetic_samples.png")
  args = parser.parse_args()

  builder = tfds.builder(args.dataset, data_dir=args.data_dir)
  builder.download_and_prepare()
  candidates = list(tfds.as_numpy(builder.as_dataset(split=args.split).take(8 * args.num_images)))
  examples = candidates[: args.num_images]
  with_crowd = [e for e in candidates if e["crowd"].any()]
  if with_crowd and not any(e["crowd"].any() for e in examples):  # show a crowd group too
    examples[-1] = with_crowd[0]
  # Full colour: a 256-colour palette would shrink the file threefold but shift small hues.
  Image.fromarray(sample_grid(examples)).save(args.output, optimize=True)
  print(f"wrote {args.output}")
  print_statistics(split_statistics(builder, args.split), args.split)


if __name__ == "__main__":
  main()
