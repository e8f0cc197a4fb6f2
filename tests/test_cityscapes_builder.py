"""cityscapes_instances against a miniature Cityscapes release drawn by fake_cityscapes.

The fixture writes the official file layout (leftImg8bit/ and gtFine/ with the real file names,
8-bit labelIds and 16-bit instanceIds, plus the colour/polygon files the builder must skip) as
folders and as the two official zips. The expected output is computed here with plain loops
from what was drawn, with a hand-written labelId -> trainId table.
"""

import re
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from segrpn_jax.datasets import cityscapes_instances, fake_cityscapes, labels

HEIGHT, WIDTH = 24, 40
# (split folder, city, sequence, frame)
FRAMES = (
  ("train", "aachen", 0, 19),
  ("train", "aachen", 1, 42),
  ("train", "bochum", 0, 7),
  ("val", "frankfurt", 0, 294),
  ("val", "frankfurt", 2, 11),
)
# Hand-written: the labelIds this fixture uses and their trainIds.
TRAIN_ID = {0: 255, 4: 255, 7: 0, 8: 1, 9: 255, 11: 2, 21: 8, 23: 10}
TRAIN_ID |= {24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 29: 255, 30: 255, 31: 16, 32: 17, 33: 18}
THING = {24: 0, 25: 1, 26: 2, 27: 3, 28: 4, 31: 5, 32: 6, 33: 7}  # labelId -> 0-based class


def _expected(image, label_ids, instance_ids):
  """The builder's output, computed with per-object loops."""
  semantic = np.vectorize(TRAIN_ID.get)(label_ids).astype(np.uint8)
  boxes, classes, areas = [], [], []
  instance_map = np.zeros((HEIGHT, WIDTH), np.uint16)
  crowd = np.zeros((HEIGHT, WIDTH), bool)
  for value in sorted(np.unique(instance_ids).tolist()):
    mask = instance_ids == value
    if value < 1000:
      crowd |= mask & (value in THING)
      continue
    if value // 1000 not in THING:
      continue  # caravan, trailer
    rows, cols = np.nonzero(mask)
    instance_map[mask] = len(boxes) + 1
    box = [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
    boxes.append(np.array(box, np.float64) / [WIDTH, HEIGHT, WIDTH, HEIGHT])
    classes.append(THING[value // 1000])
    areas.append(int(mask.sum()))
  return {
    "image": image,
    "semantic": semantic,
    "instance_map": instance_map,
    "crowd": crowd,
    "boxes_xyxy": np.array(boxes).reshape(-1, 4),
    "classes": np.array(classes, np.int64),
    "areas": np.array(areas, np.int64),
  }


@pytest.fixture(scope="module")
def release(tmp_path_factory):
  """Writes the release as folders and as zips; returns their dirs and the expected examples."""
  root = tmp_path_factory.mktemp("cityscapes")
  folders, zips = root / "folders", root / "zips"
  names = fake_cityscapes.write_release(folders, FRAMES, HEIGHT, WIDTH, seed=7)
  fake_cityscapes.write_release(zips, FRAMES, HEIGHT, WIDTH, seed=7, as_zips=True)
  expected = {"train": {}, "validation": {}}
  for frame in fake_cityscapes.draw_frames(FRAMES, HEIGHT, WIDTH, seed=7):
    tfds_split = {"train": "train", "val": "validation"}[frame.split]
    expected[tfds_split][frame.stem] = _expected(frame.image, frame.label_ids, frame.instance_ids)
  # The drawing must exercise every case the builder distinguishes.
  values = np.concatenate(
    [np.unique(np.array(Image.open(folders / n))) for n in names if n.endswith("instanceIds.png")]
  )
  assert np.any((values < 1000) & np.isin(values, list(THING)))  # crowd groups
  assert np.any(np.isin(values // 1000, [29, 30]) & (values >= 1000))  # caravans/trailers
  assert len(np.unique(values[values >= 1000] // 1000)) >= 6
  return {"folders": folders, "zips": zips, "expected": expected, "root": root}


def _build(manual_dir, data_dir):
  builder = cityscapes_instances.CityscapesInstances(data_dir=str(data_dir))
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
  )
  return builder


def _check_against_drawing(builder, expected):
  for split, frames in expected.items():
    examples = list(tfds.as_numpy(builder.as_dataset(split=split)))
    assert sorted(e["image_id"].decode() for e in examples) == sorted(frames)
    for example in examples:
      want = frames[example["image_id"].decode()]
      np.testing.assert_array_equal(example["image"], want["image"])
      np.testing.assert_array_equal(example["semantic"][..., 0], want["semantic"])
      np.testing.assert_array_equal(example["instance_map"], want["instance_map"])
      np.testing.assert_array_equal(example["crowd"], want["crowd"])
      instances = example["instances"]
      ymin, xmin, ymax, xmax = instances["bbox"].T
      got_xyxy = np.stack([xmin, ymin, xmax, ymax], axis=1)
      np.testing.assert_allclose(got_xyxy, want["boxes_xyxy"], atol=1e-6)
      np.testing.assert_array_equal(instances["label"], want["classes"])
      np.testing.assert_array_equal(instances["area"], want["areas"])


def test_folder_release_matches_drawing(release, tmp_path):
  builder = _build(release["folders"], tmp_path)
  assert builder.info.splits["train"].num_examples == 3
  assert builder.info.splits["validation"].num_examples == 2
  assert set(builder.info.splits) == {"train", "validation"}  # test has no labels: not built
  _check_against_drawing(builder, release["expected"])


def test_zip_release_matches_drawing(release, tmp_path):
  _check_against_drawing(_build(release["zips"], tmp_path), release["expected"])


def test_corrupt_annotation_fails_naming_the_file(release, tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(release["folders"], manual)
  broken = manual / "gtFine/train/aachen/aachen_000001_000042_gtFine_instanceIds.png"
  broken.write_bytes(broken.read_bytes()[:60])  # truncated mid-stream
  with pytest.raises(ValueError, match=re.escape("aachen_000001_000042_gtFine_instanceIds.png")):
    _build(manual, tmp_path / "data")


def test_missing_annotation_fails_naming_the_file(release, tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(release["folders"], manual)
  (manual / "gtFine/val/frankfurt/frankfurt_000002_000011_gtFine_labelIds.png").unlink()
  with pytest.raises(
    FileNotFoundError, match=re.escape("frankfurt_000002_000011_gtFine_labelIds.png")
  ):
    _build(manual, tmp_path / "data")


def test_corrupt_zip_fails_naming_the_zip(release, tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(release["zips"], manual)
  (manual / cityscapes_instances.LABEL_ZIP).write_bytes(b"not a zip at all")
  with pytest.raises(ValueError, match=re.escape(cityscapes_instances.LABEL_ZIP)):
    _build(manual, tmp_path / "data")


def test_label_table():
  assert len(labels.LABELS) == 35  # labelIds 0..33 and the license plate (-1)
  assert len({label.id for label in labels.LABELS}) == 35
  lut = labels.label_id_to_train_id_lut()
  for label_id, train_id in TRAIN_ID.items():
    assert lut[label_id] == train_id, labels.LABEL_BY_ID[label_id].name
  assert labels.TRAIN_ID_NAMES[0] == "road" and labels.TRAIN_ID_NAMES[18] == "bicycle"
  assert len(labels.TRAIN_ID_NAMES) == 19
  assert labels.THING_NAMES == (
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
  )
  thing_lut = labels.label_id_to_thing_index_lut()
  assert {i: int(thing_lut[i]) for i in THING} == THING
  assert thing_lut[29] == thing_lut[30] == thing_lut[7] == -1
  # Detection class c (1..8) has trainId c + 10.
  for c, name in enumerate(labels.THING_NAMES, start=1):
    assert labels.LABEL_BY_NAME[name].train_id == c + labels.THING_TRAIN_ID_OFFSET
