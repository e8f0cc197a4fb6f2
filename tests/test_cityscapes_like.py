"""synthetic_streets/cityscapes_like: labels, the batch contract, statistics, determinism, token."""

import numpy as np
import pytest

from segrpn_jax import input_pipeline
from segrpn_jax.configs import default
from segrpn_jax.datasets import cityscapes_like_scene, features, statistics, synthetic_streets

HEIGHT, WIDTH = 256, 512  # the variant's resolution: the stated ranges are measured at it
STUFF_TRAIN_IDS = {0, 1, 2, 5, 6, 7, 8, 10, 255}  # + ignore (the ego vehicle's bonnet)
NUM_SCENES = 16


@pytest.fixture(scope="module")
def scenes():
  return [
    cityscapes_like_scene.generate_scene(np.random.default_rng([3, i]), HEIGHT, WIDTH)
    for i in range(NUM_SCENES)
  ]


def test_scene_labels_are_consistent(scenes):
  min_area = cityscapes_like_scene.MIN_VISIBLE_AREA * HEIGHT * WIDTH
  for scene in scenes:
    index_map, semantic, crowd = scene["index_map"], scene["semantic"], scene["crowd"]
    num = len(scene["labels"])
    assert num <= cityscapes_like_scene.MAX_INSTANCES
    assert set(np.unique(index_map)) == set(range(num + 1))  # every instance keeps pixels
    visible = np.bincount(index_map.ravel(), minlength=num + 1)[1:]
    assert np.all(visible >= min_area)
    assert np.all(scene["amodal_area"] >= visible)  # nothing shows more than its own silhouette
    # Instance pixels carry their class's trainId (thing index + 11).
    np.testing.assert_array_equal(
      semantic[index_map > 0], scene["labels"][index_map[index_map > 0] - 1] + 11
    )
    # Every thing pixel is an instance or a crowd region, never both.
    things = (semantic >= 11) & (semantic <= 18)
    np.testing.assert_array_equal(things, (index_map > 0) | crowd)
    assert not np.any((index_map > 0) & crowd)
    assert set(np.unique(semantic[~things]).tolist()) <= STUFF_TRAIN_IDS
    assert scene["image"].dtype == np.uint8 and scene["image"].shape == (HEIGHT, WIDTH, 3)


def test_statistics_fall_in_the_stated_ranges(scenes):
  """The ranges of docs/synthetic.md ("Tested ranges"), on 16 scenes of 256x512."""
  records = [
    statistics.image_record(
      s["index_map"], s["semantic"], s["crowd"], s["labels"], s["amodal_area"]
    )
    for s in scenes
  ]
  stats = statistics.summarize(records)
  per_image = stats["per_image"]
  assert 11 <= per_image.mean() <= 25  # Cityscapes: 17.5
  shares = stats["class_counts"].sum(axis=0) / per_image.sum()
  assert 0.38 <= shares[2] <= 0.68  # car, Cityscapes 51.7 %
  assert 0.2 <= shares[0] <= 0.5  # person, Cityscapes 34.4 %
  median = np.median(stats["side_fractions"])
  assert 0.04 <= median <= 0.12  # most objects are small
  assert np.percentile(stats["side_fractions"], 95) <= 0.6
  assert 0.4 <= stats["occluded"]["over_10"] <= 0.8  # occlusion is the rule, not the exception
  assert 0.6 <= stats["touching"] <= 1.0
  # The counts behind it are the records' own.
  assert per_image.tolist() == [len(s["labels"]) for s in scenes]
  np.testing.assert_allclose(stats["sides"] / HEIGHT, stats["side_fractions"])


def test_image_record_on_a_hand_made_map():
  index_map = np.zeros((6, 8), np.int64)
  index_map[1:3, 1:4] = 1  # 2x3 box
  index_map[2:6, 4:6] = 2  # 4x2 box, borders instance 1 at (2, 3)-(2, 4)
  index_map[5, 0] = 3  # a lone pixel next to a pole
  semantic = np.full((6, 8), 0, np.uint8)
  semantic[4:6, 1] = 5  # pole
  crowd = np.zeros((6, 8), bool)
  record = statistics.image_record(index_map, semantic, crowd, np.array([2, 0, 7]), [8, 8, 2])
  np.testing.assert_allclose(record["sides"], np.sqrt([6.0, 8.0, 1.0]))
  np.testing.assert_array_equal(record["visible"], [6, 8, 1])
  np.testing.assert_array_equal(record["touching"], [True, True, True])
  semantic[4:6, 1] = 0  # without the pole, the lone pixel touches nothing
  record = statistics.image_record(index_map, semantic, crowd, np.array([2, 0, 7]))
  np.testing.assert_array_equal(record["touching"], [True, True, False])


def test_map50_spread_matches_the_binomial_formula():
  # One class, 2 instances per image, independent instances at recall 0.5: the score is a
  # proportion over 2 N instances, SD sqrt(0.25 / (2 N)).
  counts = np.zeros((10, 8), np.int64)
  counts[:, 0] = 2
  spread = statistics.map50_spread(counts, 500, image_correlation=0.0, replicates=2000)
  np.testing.assert_allclose(spread, 100 * np.sqrt(0.25 / 1000), rtol=0.08)
  # Correlated outcomes within an image widen it.
  assert statistics.map50_spread(counts, 500, image_correlation=0.3, replicates=500) > spread


def test_examples_are_deterministic_by_seed():
  config = synthetic_streets.SyntheticStreetsConfig(
    name="t", height=96, width=192, seed=5, scene="cityscapes_like"
  )
  a = synthetic_streets.make_split_example(config, "validation", 7)
  b = synthetic_streets.make_split_example(config, "validation", 7)
  assert a["image"] == b["image"]
  for key in ("semantic", "instance_map", "crowd"):
    np.testing.assert_array_equal(a[key], b[key])
  np.testing.assert_array_equal(a["instances"]["bbox"], b["instances"]["bbox"])
  other = synthetic_streets.SyntheticStreetsConfig(
    name="u", height=96, width=192, seed=6, scene="cityscapes_like"
  )
  assert synthetic_streets.make_split_example(other, "validation", 7)["image"] != a["image"]
  assert synthetic_streets.make_split_example(config, "train", 7)["image"] != a["image"]


def test_registered_config_and_token():
  builder = synthetic_streets.SyntheticStreets(config="cityscapes_like", data_dir="/nonexistent")
  config = builder.builder_config
  assert (config.height, config.width, config.scene) == (256, 512, "cityscapes_like")
  assert config.num_validation == synthetic_streets.CITYSCAPES_LIKE_VALIDATION
  assert str(builder.version) == "1.0.0"
  for tokens in ("cityscapes_like", "synthetic,cityscapes_like", "cityscapes_like,synthetic"):
    c = default.apply_tokens(default.get_config(), tokens)
    assert c.data.dataset == "synthetic_streets/cityscapes_like"
    assert c.data.max_instances >= cityscapes_like_scene.MAX_INSTANCES
    # The quick start is applied once, whatever the order.
    assert tuple(c.data.image_size) == (256, 512) and c.model.roi.canonical_size == 112


def test_built_examples_follow_the_batch_contract(tmp_path):
  config = synthetic_streets.SyntheticStreetsConfig(
    name="cityscapes_like_small",
    height=128,
    width=256,
    num_train=2,
    num_validation=1,
    scene="cityscapes_like",
  )
  builder = synthetic_streets.SyntheticStreets(config=config, data_dir=str(tmp_path))
  builder.download_and_prepare()
  c = default.apply_tokens(default.get_config(), "cityscapes_like")
  c.data.data_dir, c.data.image_size, c.data.shuffle_buffer = str(tmp_path), (128, 256), 4
  c.train.batch_size = 2
  batch = next(
    input_pipeline.create_train_iterator(c, builder=builder, process_index=0, process_count=1)
  )
  n = c.data.max_instances
  want = {
    "image": (np.float32, (2, 128, 256, 3)),
    "semantic": (np.int32, (2, 128, 256)),
    "instance_map": (np.int32, (2, 128, 256)),
    "crowd": (np.bool_, (2, 128, 256)),
    "boxes": (np.float32, (2, n, 4)),
    "classes": (np.int32, (2, n)),
    "valid": (np.bool_, (2, n)),
    "example_mask": (np.bool_, (2,)),
  }
  assert set(batch) == set(want)
  for key, (dtype, shape) in want.items():
    assert batch[key].dtype == dtype and batch[key].shape == shape, key
  for i in range(2):
    valid, classes, boxes = batch["valid"][i], batch["classes"][i], batch["boxes"][i]
    np.testing.assert_array_equal(valid, classes > 0)
    assert 1 <= valid.sum() == batch["instance_map"][i].max() and classes.max() <= 8
    # Same size, no resizing: every box is exactly the extent of its instance's pixels.
    extents, _ = features.instance_extents(batch["instance_map"][i], int(valid.sum()))
    np.testing.assert_allclose(boxes[valid], extents, atol=1e-3)
    assert not boxes[~valid].any()
    things = batch["instance_map"][i] > 0
    np.testing.assert_array_equal(
      batch["semantic"][i][things], classes[batch["instance_map"][i][things] - 1] + 10
    )
