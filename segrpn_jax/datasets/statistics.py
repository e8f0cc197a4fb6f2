"""Statistics of a SegRPN dataset split, beside Cityscapes' fine train split.

  python -m segrpn_jax.datasets.statistics --dataset=synthetic_streets/cityscapes_like \\
      --split=validation [--data_dir=DIR] [--max_images=N] [--generate | --build]
      [--spread_sizes=2000,6000]

Reads a built split (--build builds it first; --generate draws a synthetic_streets split's
examples directly instead, without building) and prints, as Markdown tables:

- instances per image, in total and per class, beside Cityscapes' (approximate, see
  `cityscapes_like_scene.CITYSCAPES_TRAIN_INSTANCES`);
- box sides sqrt(w * h): percentiles in pixels and as a fraction of the image height (the
  fraction compares resolutions), and the share of instances on each FPN level of each scale
  case (thresholds times size_scale = H / 512, as the model applies them);
- occlusion: `touching`, the fraction of instances whose mask borders another instance, a crowd
  region or a pole, traffic light, sign or vegetation (computable on any split, Cityscapes too);
  with --generate also the exact occluded fraction of every instance (1 - visible / amodal
  pixels, from the generator);
- the sampling spread of mAP50 that the split's size and class counts allow (`map50_spread`).
"""

from collections.abc import Iterable, Iterator

import numpy as np
from absl import flags

from segrpn_jax import errors
from segrpn_jax.datasets import cityscapes_like_scene, labels

# Stuff that stands in front of objects in street scenes: pole, traffic light, traffic sign,
# vegetation (trainIds).
OCCLUDER_TRAIN_IDS = (5, 6, 7, 8)
SIDE_PERCENTILES = (5, 25, 50, 75, 95)
SCALE_CASES = ("case1", "case2", "case3")


def image_record(
  index_map_hxw: np.ndarray,
  semantic_hxw: np.ndarray,
  crowd_hxw: np.ndarray,
  labels_k: np.ndarray,
  amodal_area_k: np.ndarray | None = None,
) -> dict:
  """The per-image numbers the split statistics are made of.

  Args:
    index_map_hxw: int [H, W], 0 = none, k = instance k (1..K).
    semantic_hxw: int [H, W] trainIds.
    crowd_hxw: bool [H, W] crowd regions.
    labels_k: int [K] thing index 0..7 of instance k + 1.
    amodal_area_k: optional int [K] pixels of each instance with nothing in front of it.

  Returns:
    A dict: `height`, `width`, `labels` [K], `sides` [K] (sqrt of the box area in pixels),
    `visible` [K] (pixels), `touching` bool [K], `amodal` [K] or None, `crowd_pixels`.
  """
  height, width = index_map_hxw.shape
  num = len(labels_k)
  flat = index_map_hxw.ravel()
  ids = np.flatnonzero(flat)
  rows, cols = ids // width, ids % width
  k = flat[ids]
  visible = np.bincount(k, minlength=num + 1)[1:]
  x1 = np.full(num + 1, width, np.int64)
  y1 = np.full(num + 1, height, np.int64)
  x2 = np.zeros(num + 1, np.int64)
  y2 = np.zeros(num + 1, np.int64)
  np.minimum.at(x1, k, cols)
  np.minimum.at(y1, k, rows)
  np.maximum.at(x2, k, cols + 1)
  np.maximum.at(y2, k, rows + 1)
  sides = np.sqrt(np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0))[1:].astype(np.float64)

  # An instance pixel next to (4-neighbourhood) another instance, a crowd region or an occluder.
  other = np.isin(semantic_hxw, OCCLUDER_TRAIN_IDS) | crowd_hxw
  touching = np.zeros(num + 1, bool)
  for a, b in (
    (np.s_[:, :-1], np.s_[:, 1:]),
    (np.s_[:, 1:], np.s_[:, :-1]),
    (np.s_[:-1, :], np.s_[1:, :]),
    (np.s_[1:, :], np.s_[:-1, :]),
  ):
    here, there = index_map_hxw[a], index_map_hxw[b]
    border = (here > 0) & (there != here) & ((there > 0) | other[b])
    touching[here[border]] = True
  return {
    "height": height,
    "width": width,
    "labels": np.asarray(labels_k, np.int64),
    "sides": sides,
    "visible": visible,
    "touching": touching[1:],
    "amodal": None if amodal_area_k is None else np.asarray(amodal_area_k, np.int64),
    "crowd_pixels": int(crowd_hxw.sum()),
  }


def summarize(records: list[dict]) -> dict:
  """Split statistics from per-image records (`image_record`).

  Args:
    records: One record per image, all of one resolution.

  Returns:
    A dict: `images`, `height`, `per_image` [N] instance counts, `class_counts` [N, 8],
    `sides` [M] and `side_fractions` [M] (of the image height), `touching` (fraction),
    `occluded` (fractions of instances occluded by more than 10 % / 50 %, and the mean
    occluded fraction; None without amodal areas), `levels` {case: [5] shares of levels 2..6},
    `crowd_images`.
  """
  if not records:
    raise errors.DataError("statistics: the split has no images; check --split and --max_images.")
  height = records[0]["height"]
  class_counts = np.stack([np.bincount(r["labels"], minlength=8) for r in records])
  sides = np.concatenate([r["sides"] for r in records])
  touching = np.concatenate([r["touching"] for r in records])
  occluded = None
  if all(r["amodal"] is not None for r in records):
    visible = np.concatenate([r["visible"] for r in records])
    amodal = np.concatenate([r["amodal"] for r in records])
    fraction = 1.0 - visible / np.maximum(amodal, 1)
    occluded = {
      "over_10": float(np.mean(fraction > 0.1)),
      "over_50": float(np.mean(fraction > 0.5)),
      "mean": float(np.mean(fraction)),
    }
  return {
    "images": len(records),
    "height": height,
    "per_image": class_counts.sum(axis=1),
    "class_counts": class_counts,
    "sides": sides,
    "side_fractions": sides / height,
    "touching": float(np.mean(touching)) if len(touching) else 0.0,
    "occluded": occluded,
    "levels": {case: level_shares(sides, case, height / 512) for case in SCALE_CASES},
    "crowd_images": sum(r["crowd_pixels"] > 0 for r in records),
  }


def level_shares(sides: np.ndarray, case: str, size_scale: float) -> np.ndarray:
  """Share of instances on FPN levels 2..6 under a scale case (docs/architecture.md)."""
  from segrpn_jax.ops import scale  # JAX is imported only when levels are asked for

  boxes = np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], axis=1)
  member = np.asarray(scale.level_membership(boxes, case, size_scale=size_scale))
  return member.sum(axis=0) / max(len(sides), 1)


def map50_spread(
  class_counts: np.ndarray,
  num_images: int,
  recall: float = 0.5,
  image_correlation: float = 0.1,
  replicates: int = 300,
  seed: int = 0,
) -> float:
  """Sampling standard deviation of an mAP50-like score on a split of `num_images`, in points.

  A bootstrap over images of the split's per-class instance counts, with a simulated detector:
  each image gets a detection probability from a Beta distribution with mean `recall` and
  intra-image correlation `image_correlation` (some images are hard for every object in them),
  each instance is found with its image's probability, and the score is the mean over classes
  of the fraction found (classes without instances are skipped, as COCO does). Recall 0.5 is
  the worst case of the binomial variance p (1 - p); rare classes dominate the spread.

  Args:
    class_counts: int [N, 8] instances per image and class of the split (or a sample of it).
    num_images: The size of the split whose spread is wanted (images are drawn with
      replacement from `class_counts`).
    recall: Mean fraction of instances found.
    image_correlation: Correlation of two outcomes in one image (0: independent instances).
    replicates: Bootstrap replicates.
    seed: Seed of the bootstrap.

  Returns:
    The standard deviation over replicates of the score, times 100 (points).
  """
  rng = np.random.default_rng(seed)
  scores = np.empty(replicates)
  for r in range(replicates):
    counts = class_counts[rng.integers(0, len(class_counts), num_images)]
    if image_correlation > 0:
      concentration = 1.0 / image_correlation - 1.0
      p = rng.beta(recall * concentration, (1 - recall) * concentration, num_images)
    else:
      p = np.full(num_images, recall)
    found = rng.binomial(counts, p[:, None]).sum(axis=0)
    total = counts.sum(axis=0)
    scores[r] = np.mean(found[total > 0] / total[total > 0])
  return float(100 * scores.std(ddof=1))


def records_from_builder(builder, split: str, max_images: int = 0) -> Iterator[dict]:
  """Per-image records of a built tfds split (images are not decoded)."""
  import tensorflow_datasets as tfds

  decoders = {"image": tfds.decode.SkipDecoding()}
  dataset = builder.as_dataset(split=split, decoders=decoders)
  if max_images:
    dataset = dataset.take(max_images)
  for example in tfds.as_numpy(dataset):
    yield image_record(
      example["instance_map"].astype(np.int64),
      example["semantic"][..., 0],
      example["crowd"],
      example["instances"]["label"],
    )


def records_generated(config, split: str, count: int) -> Iterator[dict]:
  """Per-image records of a synthetic_streets split drawn directly, with amodal areas."""
  from segrpn_jax.datasets import synthetic_streets

  codes = {"train": 0, "validation": 1}
  for index in range(count):
    rng = np.random.default_rng([config.seed, codes[split], index])
    scene = synthetic_streets.SCENES[config.scene](rng, config.height, config.width)
    yield image_record(
      scene["index_map"], scene["semantic"], scene["crowd"], scene["labels"],
      scene.get("amodal_area"),
    )  # fmt: skip


def format_report(stats: dict, title: str) -> str:
  """Markdown tables of `summarize`'s result beside Cityscapes' fine train split."""
  images, per_image = stats["images"], stats["per_image"]
  reference = cityscapes_like_scene.PER_IMAGE
  totals = stats["class_counts"].sum(axis=0)
  lines = [
    f"{title}: {images} images of height {stats['height']}",
    "",
    "| instances per image | this split | Cityscapes fine train |",
    "|---|---|---|",
    f"| all (mean) | {per_image.mean():.2f} | {reference.sum():.2f} |",
    f"| all (median / 90th pct. / max) | {np.median(per_image):.0f} / "
    f"{np.percentile(per_image, 90):.0f} / {per_image.max()} | |",
  ]
  for c, name in enumerate(labels.THING_NAMES):
    lines.append(
      f"| {name} | {totals[c] / images:.3f} ({100 * totals[c] / max(totals.sum(), 1):.1f} %) | "
      f"{reference[c]:.3f} ({100 * reference[c] / reference.sum():.1f} %) |"
    )
  sides, fractions = stats["sides"], stats["side_fractions"]
  pct = ", ".join(f"p{p}" for p in SIDE_PERCENTILES)
  lines += [
    "",
    f"box side sqrt(wh) ({pct}): "
    + ", ".join(f"{v:.1f}" for v in np.percentile(sides, SIDE_PERCENTILES))
    + " px = "
    + ", ".join(f"{100 * v:.1f}" for v in np.percentile(fractions, SIDE_PERCENTILES))
    + " % of the height",
    "",
    "| case | L2 | L3 | L4 | L5 | L6 |",
    "|---|---|---|---|---|---|",
  ]
  for case, shares in stats["levels"].items():
    lines.append(f"| {case} | " + " | ".join(f"{100 * s:.1f} %" for s in shares) + " |")
  lines += [
    "",
    f"touching (borders another instance, a crowd region or a pole/light/sign/tree): "
    f"{100 * stats['touching']:.1f} % of instances",
  ]
  if stats["occluded"] is not None:
    occluded = stats["occluded"]
    lines.append(
      f"occluded (exact, from the generator): > 10 %: {100 * occluded['over_10']:.1f} % of "
      f"instances, > 50 %: {100 * occluded['over_50']:.1f} %, mean occluded fraction "
      f"{100 * occluded['mean']:.1f} %"
    )
  crowd = stats["crowd_images"]
  lines.append(f"crowd regions in {crowd} images ({100 * crowd / images:.1f} %)")
  return "\n".join(lines)


def spread_report(class_counts: np.ndarray, sizes: Iterable[int]) -> str:
  """A table of `map50_spread` for split sizes, with and without intra-image correlation."""
  lines = [
    "| validation images | SD of mAP50, independent instances | SD, image correlation 0.1 |",
    "|---|---|---|",
  ]
  for n in sizes:
    independent = map50_spread(class_counts, n, image_correlation=0.0)
    correlated = map50_spread(class_counts, n, image_correlation=0.1)
    lines.append(f"| {n} | {independent:.2f} | {correlated:.2f} |")
  return "\n".join(lines)


FLAGS = flags.FLAGS


def _define_flags() -> None:
  flags.DEFINE_string("dataset", "synthetic_streets/cityscapes_like", "tfds name[/config]")
  flags.DEFINE_string("split", "validation", "split to measure")
  flags.DEFINE_string("data_dir", None, "tfds data_dir (default ~/tensorflow_datasets)")
  flags.DEFINE_integer("max_images", 0, "measure the first N images only (0: all)")
  flags.DEFINE_bool("generate", False, "draw a synthetic_streets split directly, build nothing")
  flags.DEFINE_bool("build", False, "build the dataset first when it is not built")
  flags.DEFINE_list("spread_sizes", [], "also print map50_spread for these split sizes")


def main(argv: list[str]) -> int:
  del argv
  import tensorflow_datasets as tfds

  import segrpn_jax.datasets  # noqa: F401  (registers the builders)

  data_dir = errors.expand_path(FLAGS.data_dir)
  try:
    builder = tfds.builder(FLAGS.dataset, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise errors.DataError(
      f"--dataset={FLAGS.dataset!r} is not a tfds dataset; use cityscapes_instances or "
      "synthetic_streets[/default|/cityscapes_like|/res512x1024|/tiny]."
    ) from e
  if FLAGS.generate:
    config = builder.builder_config
    if builder.name != "synthetic_streets":
      raise errors.DataError(f"--generate draws synthetic_streets only, not {FLAGS.dataset!r}.")
    sizes = {"train": config.num_train, "validation": config.num_validation}
    if FLAGS.split not in sizes:
      raise errors.DataError(f"--split={FLAGS.split!r}: use train or validation.")
    count = min(sizes[FLAGS.split], FLAGS.max_images or sizes[FLAGS.split])
    records = records_generated(config, FLAGS.split, count)
  else:
    if not builder.is_prepared():
      if not FLAGS.build:
        raise errors.DataError(
          f"{FLAGS.dataset} is not built in {builder.data_dir}: pass --build to build it "
          "first, or --generate to draw a synthetic split without building it."
        )
      builder.download_and_prepare()
    records = records_from_builder(builder, FLAGS.split, FLAGS.max_images)
  stats = summarize(list(records))
  print(format_report(stats, f"{FLAGS.dataset} {FLAGS.split}"))
  if FLAGS.spread_sizes:
    print()
    print(spread_report(stats["class_counts"], [int(n) for n in FLAGS.spread_sizes]))
  return 0


if __name__ == "__main__":
  _define_flags()
  errors.app_run(main)
