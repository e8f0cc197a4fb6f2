"""synthetic_streets: label invariants of the drawn scenes, object sizes, determinism, the build."""

import os
import warnings

import numpy as np
import pytest
import tensorflow_datasets as tfds

from segrpn_jax.datasets import features, synthetic_scene, synthetic_streets

# docs/architecture.md's scale table at 512x1024: [low, high) box sides of levels 2..6.
INF = np.inf
CASES = {
  "case1": ((0, 32), (32, 64), (64, 128), (128, 256), (256, INF)),
  "case2": ((0, 112), (112, 224), (224, 448), (448, INF), (448, INF)),
  "case3": ((0, 48), (48, 96), (96, 192), (192, 384), (384, INF)),
}
STUFF_TRAIN_IDS = {0, 1, 2, 5, 7, 8, 10}  # road, sidewalk, building, pole, sign, vegetation, sky


def _scenes(height, width, count, seed=0):
  return [
    synthetic_scene.generate_scene(np.random.default_rng([seed, i]), height, width)
    for i in range(count)
  ]


def test_scene_labels_are_consistent():
  for scene in _scenes(96, 192, 12):
    index_map, semantic, crowd = scene["index_map"], scene["semantic"], scene["crowd"]
    example = features.make_example(
      "x", scene["image"], semantic, index_map, scene["labels"], crowd
    )
    num = len(scene["labels"])
    assert num >= 1
    assert set(np.unique(index_map)) == set(range(num + 1))
    bbox = example["instances"]["bbox"]
    for k in range(1, num + 1):
      rows, cols = np.nonzero(index_map == k)
      # The box is exactly the extent of the instance's pixels, [min, max + 1).
      want = np.array(
        [rows.min() / 96, cols.min() / 192, (rows.max() + 1) / 96, (cols.max() + 1) / 192],
        np.float32,
      )
      np.testing.assert_allclose(bbox[k - 1], want, atol=1e-7)
      assert example["instances"]["area"][k - 1] == rows.size
      assert rows.size >= synthetic_scene.MIN_VISIBLE_PIXELS
      # Semantic agrees with the instance's class (trainId = thing index + 11).
      assert np.all(semantic[index_map == k] == scene["labels"][k - 1] + 11)
    things = semantic >= 11
    # Every thing pixel is an instance or crowd, never both; stuff is one of the drawn classes.
    np.testing.assert_array_equal(things, (index_map > 0) | crowd)
    assert not np.any((index_map > 0) & crowd)
    assert set(np.unique(semantic[~things])) <= STUFF_TRAIN_IDS
    assert scene["image"].dtype == np.uint8 and scene["image"].shape == (96, 192, 3)


def test_sizes_span_every_level_of_every_case():
  height, width = 256, 512
  sides = []
  for scene in _scenes(height, width, 60, seed=1):
    boxes, _ = features.instance_extents(scene["index_map"], len(scene["labels"]))
    sides.append(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
  sides = np.concatenate(sides)
  size_scale = height / 512  # the model scales the thresholds the same way
  for case, ranges in CASES.items():
    counts = [np.sum((sides >= lo * size_scale) & (sides < hi * size_scale)) for lo, hi in ranges]
    assert min(counts) >= 3, (case, counts)
  # Most objects are not giant: the top case1 level holds a minority.
  assert np.mean(sides >= 256 * size_scale) < 0.25


def test_every_class_and_crowd_appear():
  scenes = _scenes(64, 128, 40, seed=2)
  classes = np.concatenate([s["labels"] for s in scenes])
  assert set(classes.tolist()) == set(range(8))
  assert sum(bool(s["crowd"].any()) for s in scenes) >= 4


def test_examples_are_deterministic_by_seed():
  config = synthetic_streets.SyntheticStreetsConfig(name="t", height=48, width=96, seed=5)
  a = synthetic_streets.make_split_example(config, "train", 3)
  b = synthetic_streets.make_split_example(config, "train", 3)
  assert a["image"] == b["image"]
  np.testing.assert_array_equal(a["instance_map"], b["instance_map"])
  np.testing.assert_array_equal(a["instances"]["bbox"], b["instances"]["bbox"])
  other_index = synthetic_streets.make_split_example(config, "train", 4)
  other_split = synthetic_streets.make_split_example(config, "validation", 3)
  other_seed = synthetic_streets.make_split_example(
    synthetic_streets.SyntheticStreetsConfig(name="u", height=48, width=96, seed=6), "train", 3
  )
  for other in (other_index, other_split, other_seed):
    assert other["image"] != a["image"]


def test_worker_pool_starts_fresh_processes_and_gives_the_same_examples(monkeypatch):
  # The builder runs inside processes where JAX's threads run: its pool must not os.fork().
  assert synthetic_streets.POOL_START_METHOD in ("spawn", "forkserver")

  def no_fork():
    raise AssertionError("the builder's worker pool called os.fork()")

  monkeypatch.setattr(os, "fork", no_fork)
  monkeypatch.setattr(synthetic_streets, "_num_workers", lambda num_examples: 2)
  config = synthetic_streets.SyntheticStreetsConfig(
    name="pool", height=32, width=64, num_train=synthetic_streets.PARALLEL_MIN_EXAMPLES
  )
  builder = synthetic_streets.SyntheticStreets(config=config, data_dir="/nonexistent-unused")
  with warnings.catch_warnings():
    warnings.simplefilter("error", DeprecationWarning)  # Python 3.12+ warns on fork with threads
    pooled = list(builder._generate_examples("train", config.num_train))
  assert [key for key, _ in pooled] == list(range(config.num_train))
  for index in (0, 31, config.num_train - 1):
    direct = synthetic_streets.make_split_example(config, "train", index)
    assert pooled[index][1]["image"] == direct["image"]
    np.testing.assert_array_equal(pooled[index][1]["instance_map"], direct["instance_map"])
    pooled_boxes = pooled[index][1]["instances"]["bbox"]
    np.testing.assert_array_equal(pooled_boxes, direct["instances"]["bbox"])


@pytest.fixture(scope="module")
def tiny_builder(tmp_path_factory):
  builder = tfds.builder("synthetic_streets/tiny", data_dir=str(tmp_path_factory.mktemp("tfds")))
  builder.download_and_prepare()
  return builder


def test_tiny_build_stores_the_drawn_examples(tiny_builder):
  config = tiny_builder.builder_config
  assert (config.height, config.width) == (64, 128)
  assert tiny_builder.info.splits["train"].num_examples == 8
  assert tiny_builder.info.splits["validation"].num_examples == 4
  for example in tfds.as_numpy(tiny_builder.as_dataset(split="validation")):
    index = int(example["image_id"].decode().rsplit("_", 1)[1])
    rng = np.random.default_rng([config.seed, 1, index])
    scene = synthetic_scene.generate_scene(rng, 64, 128)
    np.testing.assert_array_equal(example["semantic"][..., 0], scene["semantic"])
    np.testing.assert_array_equal(example["instance_map"], scene["index_map"])
    np.testing.assert_array_equal(example["crowd"], scene["crowd"])
    np.testing.assert_array_equal(example["instances"]["label"], scene["labels"])
    # JPEG (quality 90, 4:4:4): close to the drawn pixels, about the size of their noise.
    error = np.abs(example["image"].astype(float) - scene["image"].astype(float)).mean()
    assert error < 7.0, error
