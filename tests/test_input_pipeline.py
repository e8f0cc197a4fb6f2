"""input_pipeline on synthetic_streets/tiny: the batch contract, flips, eval coverage, errors."""

import collections
import itertools
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from segrpn_jax import input_pipeline, metrics, pretrained, run_config
from segrpn_jax.configs import default
from segrpn_jax.datasets import labels

HEIGHT, WIDTH = 48, 96  # resized from the tiny builder's 64x128
MAX_INSTANCES = 16
MEAN, STD = np.array(pretrained.PIXEL_MEAN), np.array(pretrained.PIXEL_STD)
CONTRACT = {
  "image": (np.float32, (HEIGHT, WIDTH, 3)),
  "semantic": (np.int32, (HEIGHT, WIDTH)),
  "instance_map": (np.int32, (HEIGHT, WIDTH)),
  "crowd": (np.bool_, (HEIGHT, WIDTH)),
  "boxes": (np.float32, (MAX_INSTANCES, 4)),
  "classes": (np.int32, (MAX_INSTANCES,)),
  "valid": (np.bool_, (MAX_INSTANCES,)),
  "example_mask": (np.bool_, ()),
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("tfds"))
  tfds.builder("synthetic_streets/tiny", data_dir=path).download_and_prepare()
  return path


def _config(data_dir, **overrides):
  config = default.get_config()
  config.data.dataset = "synthetic_streets/tiny"
  config.data.data_dir = data_dir
  config.data.image_size = (HEIGHT, WIDTH)
  config.data.max_instances = MAX_INSTANCES
  config.data.shuffle_buffer = 8
  config.train.batch_size = 2
  config.eval.batch_size = 6  # 4 validation examples: one batch with 2 padding examples
  for key, value in overrides.items():  # "data__max_instances" sets config.data.max_instances
    *sections, name = key.split("__")
    node = config
    for section in sections:
      node = node[section]
    node[name] = value
  return config


def _examples(batches):
  """Splits batches into per-example dicts."""
  for batch in batches:
    for i in range(len(batch["image"])):
      yield {k: v[i] for k, v in batch.items()}


def _extent(mask_hxw):
  rows, cols = np.nonzero(mask_hxw)
  return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float32)


def _check_contract(example, with_image_id):
  assert set(example) == set(CONTRACT) | ({"image_id"} if with_image_id else set())
  for key, (dtype, shape) in CONTRACT.items():
    assert example[key].dtype == dtype and example[key].shape == shape, key
  if not example["example_mask"]:
    return
  pixels = example["image"] * STD + MEAN  # undo the ImageNet normalisation
  assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
  valid, classes, boxes = example["valid"], example["classes"], example["boxes"]
  np.testing.assert_array_equal(valid, classes > 0)
  assert valid.sum() >= 1 and np.all(classes <= 8) and np.all(boxes[~valid] == 0)
  assert np.all(boxes[valid, 0] >= 0) and np.all(boxes[valid, 2] <= WIDTH)
  assert np.all(boxes[valid, 1] >= 0) and np.all(boxes[valid, 3] <= HEIGHT)
  assert example["instance_map"].max() <= valid.sum()
  for k in range(1, valid.sum() + 1):
    mask = example["instance_map"] == k
    if mask.any():  # nearest resizing may drop a tiny instance from the map, never its box
      x1, y1, x2, y2 = _extent(mask)
      bx1, by1, bx2, by2 = boxes[k - 1]
      # The mask, resized with nearest, stays inside its scaled box up to one pixel.
      assert bx1 - 1 <= x1 and by1 - 1 <= y1 and x2 <= bx2 + 1 and y2 <= by2 + 1
      assert np.all(example["semantic"][mask] == classes[k - 1] + 10)
  # crowd pixels are thing pixels that belong to no instance
  assert np.all(example["instance_map"][example["crowd"]] == 0)
  assert np.all(np.isin(example["semantic"][example["crowd"]], (*labels.THING_TRAIN_IDS, 255)))


def test_train_batches_follow_the_contract_and_flip_consistently(data_dir):
  config = _config(data_dir)
  train = input_pipeline.create_train_iterator(config)
  examples = list(_examples(itertools.islice(train, 8)))  # 16 examples: two epochs of 8
  for example in examples:
    _check_contract(example, with_image_id=False)
  assert any(e["crowd"].any() for e in examples)
  # The same split without flips, keyed by the image itself: every training example is one of
  # them or its exact mirror, with maps and boxes mirrored alike.
  plain = input_pipeline.create_eval_dataset(_config(data_dir, data__eval_split="train"))
  plain = [e for e in _examples(plain) if e["example_mask"]]
  assert len(plain) == 8
  flips = []
  for example in examples:
    matches = [
      (p, flip)
      for p in plain
      for flip in (False, True)
      if np.array_equal(example["image"], p["image"][:, ::-1] if flip else p["image"])
    ]
    assert len(matches) == 1
    source, flip = matches[0]
    flips.append(flip)
    mirror = (lambda a: a[:, ::-1]) if flip else (lambda a: a)
    for key in ("semantic", "instance_map", "crowd"):
      np.testing.assert_array_equal(example[key], mirror(source[key]))
    boxes = source["boxes"].copy()
    if flip:
      boxes[:, [0, 2]] = np.where(source["valid"][:, None], WIDTH - boxes[:, [2, 0]], 0)
    np.testing.assert_allclose(example["boxes"], boxes, atol=1e-4)
    np.testing.assert_array_equal(example["classes"], source["classes"])
    np.testing.assert_array_equal(example["crowd"].any(), source["crowd"].any())
  assert 0 < sum(flips) < len(flips)  # both flipped and unflipped examples were seen


def test_train_crops_are_windows_with_the_boxes_of_what_they_show(data_dir):
  crop_h, crop_w = 24, 40
  config = _config(data_dir, data__train_crop_size=(crop_h, crop_w))
  examples = list(_examples(itertools.islice(input_pipeline.create_train_iterator(config), 8)))
  again = next(input_pipeline.create_train_iterator(config))
  np.testing.assert_array_equal(again["image"][0], examples[0]["image"])  # deterministic
  plain = input_pipeline.create_eval_dataset(_config(data_dir, data__eval_split="train"))
  plain = [e for e in _examples(plain) if e["example_mask"]]
  offsets, cases = set(), collections.Counter()
  for example in examples:
    assert example["image"].shape == (crop_h, crop_w, 3)
    assert example["semantic"].shape == example["instance_map"].shape == (crop_h, crop_w)
    # Find the source image, its flip and the window's corner by the pixels themselves.
    windows = [
      (source, flip, y, x)
      for source in plain
      for flip in (False, True)
      for y in range(HEIGHT - crop_h + 1)
      for x in range(WIDTH - crop_w + 1)
      if np.array_equal(
        example["image"],
        (source["image"][:, ::-1] if flip else source["image"])[y : y + crop_h, x : x + crop_w],
      )
    ]
    assert len(windows) == 1
    source, flip, y, x = windows[0]
    offsets.add((y, x))
    for key in ("semantic", "instance_map", "crowd"):
      whole = source[key][:, ::-1] if flip else source[key]
      np.testing.assert_array_equal(example[key], whole[y : y + crop_h, x : x + crop_w])
    # A whole instance keeps its box, shifted; a cut one gets the extent of its pixels in the
    # window; one resizing dropped from the map keeps what of its box is in the window; one
    # with no pixel there is invalid (class 0, zero box), at the same index.
    source_map = source["instance_map"][:, ::-1] if flip else source["instance_map"]
    source_boxes = source["boxes"].copy()
    if flip:
      source_boxes[:, [0, 2]] = WIDTH - source_boxes[:, [2, 0]]
    limit = np.array([crop_w, crop_h, crop_w, crop_h], np.float32)
    kinds = []
    for k in range(MAX_INSTANCES):
      ys, xs = np.nonzero(example["instance_map"] == k + 1)
      total = np.count_nonzero(source_map == k + 1)
      shifted = np.clip(source_boxes[k] - np.array([x, y, x, y], np.float32), 0, limit)
      if not source["valid"][k]:
        kind, expected = "padding", None
      elif total and ys.size == total:
        kind, expected = "whole", shifted
      elif ys.size:
        kind, expected = "cut", [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
      elif total == 0 and (shifted[2] - shifted[0]) * (shifted[3] - shifted[1]) > 0:
        kind, expected = "dropped", shifted
      else:
        kind, expected = "outside", None
      kinds.append(kind)
      assert example["valid"][k] == (expected is not None), (k, kind)
      if expected is None:
        assert example["classes"][k] == 0 and not example["boxes"][k].any()
      else:
        np.testing.assert_allclose(example["boxes"][k], expected, atol=1e-4)
        assert example["classes"][k] == source["classes"][k]
    cases.update(kinds)
  assert len(offsets) > 4  # the windows move
  assert {"whole", "cut", "outside"} <= set(cases), cases


def test_a_crop_of_the_whole_image_changes_nothing(data_dir):
  cropped = next(
    input_pipeline.create_train_iterator(_config(data_dir, data__train_crop_size=(HEIGHT, WIDTH)))
  )
  plain = next(input_pipeline.create_train_iterator(_config(data_dir)))
  assert cropped.keys() == plain.keys()
  for key in plain:
    np.testing.assert_array_equal(cropped[key], plain[key], err_msg=key)


def test_eval_yields_every_example_once_and_pads_the_last_batch(data_dir):
  ev = input_pipeline.create_eval_dataset(_config(data_dir))
  assert (len(ev), ev.num_examples, ev.batch_size) == (1, 4, 6)
  first, second = list(ev), list(ev)  # re-iterable, same batches each pass
  assert len(first) == 1
  np.testing.assert_array_equal(first[0]["image"], second[0]["image"])
  batch = first[0]
  np.testing.assert_array_equal(batch["example_mask"], [True] * 4 + [False] * 2)
  ids = [i.decode() for i in batch["image_id"][:4]]
  assert sorted(ids) == [f"synthetic_validation_{i:05d}" for i in range(4)]
  for example in _examples(first):
    _check_contract(example, with_image_id=True)
  assert np.all(batch["semantic"][4:] == 255) and not batch["valid"][4:].any()
  assert not batch["crowd"][4:].any() and np.all(batch["image"][4:] == 0)


def test_eval_shards_of_two_processes_cover_the_split_once(data_dir):
  config = _config(data_dir)
  ids = []
  for process_index in range(2):
    ev = input_pipeline.create_eval_dataset(config, process_index=process_index, process_count=2)
    batches = list(ev)
    assert len(batches) == ev.num_batches == 1 and batches[0]["image"].shape[0] == 3
    mask = batches[0]["example_mask"]
    assert mask.sum() == ev.num_examples == 2
    ids += [i.decode() for i in batches[0]["image_id"][mask]]
  assert sorted(ids) == [f"synthetic_validation_{i:05d}" for i in range(4)]


def test_train_order_is_deterministic_by_seed_and_resumable(data_dir):
  config = _config(data_dir)
  first = list(itertools.islice(input_pipeline.create_train_iterator(config), 3))
  again = list(itertools.islice(input_pipeline.create_train_iterator(config), 3))
  resumed = next(input_pipeline.create_train_iterator(config, start_step=2))
  for a, b in zip(first, again, strict=True):
    for key in CONTRACT:
      np.testing.assert_array_equal(a[key], b[key])
  for key in CONTRACT:
    np.testing.assert_array_equal(resumed[key], first[2][key])
  other = next(input_pipeline.create_train_iterator(_config(data_dir, seed=1)))
  assert not np.array_equal(other["image"], first[0]["image"])


def test_too_many_instances_is_an_error_naming_the_image(data_dir):
  config = _config(data_dir, data__max_instances=1)
  pattern = r"image synthetic_validation_\d{5} has \d+ instances.*config\.data\.max_instances=1"
  with pytest.raises(ValueError, match=pattern):
    list(input_pipeline.create_eval_dataset(config))
  with pytest.raises(ValueError, match=r"synthetic_train_\d{5}.*config\.data\.max_instances"):
    next(input_pipeline.create_train_iterator(config))


def test_batch_that_does_not_divide_over_devices_is_an_error(data_dir):
  with pytest.raises(ValueError, match=re.escape("config.train.batch_size=3")):
    input_pipeline.create_train_iterator(_config(data_dir, train__batch_size=3))
  with pytest.raises(run_config.ConfigError, match=re.escape("config.eval.batch_size=5")):
    run_config.validate(_config(data_dir, eval__batch_size=5))


def test_unprepared_cityscapes_needs_the_manual_dir(tmp_path):
  config = _config(str(tmp_path), data__dataset="cityscapes_instances", data__manual_dir=None)
  files = "leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip"
  with pytest.raises(ValueError, match=f"config.data.manual_dir is not set.*{files}"):
    input_pipeline.create_datasets(config)
  config.data.manual_dir = str(tmp_path)  # exists, but holds no release
  with pytest.raises(FileNotFoundError, match=r"config\.data\.manual_dir=.*leftImg8bit_trainval"):
    input_pipeline.check_dataset(config)
  with pytest.raises(ValueError, match=re.escape("config.data.dataset='no_such_dataset'")):
    input_pipeline.check_dataset(_config(str(tmp_path), data__dataset="no_such_dataset"))


def test_crowd_regions_are_connected_components_per_class():
  crowd = np.zeros((40, 100), bool)
  semantic = np.zeros((40, 100), np.int32)  # road
  crowd[5:15, 5:20] = semantic[5:15, 5:20] = True  # a car group at the left ...
  crowd[15, 20] = True  # ... with a pixel touching it diagonally (8-connected: same group)
  crowd[20:30, 75:95] = True  # another car group far to the right
  semantic[crowd] = 13  # car
  crowd[30:35, 0:4], semantic[30:35, 0:4] = True, 11  # a person group
  boxes, classes = input_pipeline.crowd_regions(crowd, semantic)
  np.testing.assert_array_equal(boxes, [[0, 30, 4, 35], [5, 5, 21, 16], [75, 20, 95, 30]])
  np.testing.assert_array_equal(classes, [1, 3, 3])
  # The old per-class extent box covers the gap between the car groups; the regions do not.
  # A false car detection in the gap: absorbed by the extent box (AP 1 from the one true
  # car), a false positive ranked first with the regions (precision 1/2 throughout: AP 1/2).
  extent = np.array([[5, 5, 95, 30]], np.float32)
  true_car = np.array([[40, 0, 50, 4]], np.float32)
  detections = metrics.to_coco_json(
    [1], [np.array([[45, 12, 60, 24], [40, 0, 50, 4]], np.float32)], [np.array([0.9, 0.8])],
    [np.array([3, 3])],
  )  # fmt: skip
  for crowd_boxes, crowd_classes, expected in ((extent, [3], 1.0), (boxes, classes, 0.5)):
    gt = metrics.with_crowd_regions(true_car, [3], [True], crowd_boxes, crowd_classes)
    ground_truth = metrics.to_coco_ground_truth([1], *([g] for g in (gt[0], gt[1], gt[3], gt[2])))
    assert metrics.detection_ap(ground_truth, detections)["AP50/car"] == pytest.approx(expected)
  with pytest.raises(ValueError, match="same"):
    input_pipeline.crowd_regions(crowd, semantic[:10])
