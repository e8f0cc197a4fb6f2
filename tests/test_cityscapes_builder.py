"""cityscapes_instances against a miniature Cityscapes release drawn by the test.

The fixture writes the official file layout (leftImg8bit/ and gtFine/ with the real file names,
8-bit labelIds and 16-bit instanceIds, plus the colour/polygon files the builder must skip) as
folders and as the two official zips. The expected output is computed here with plain loops
from what was drawn, with a hand-written labelId -> trainId table.
"""

import io
import json
import re
import shutil
import zipfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from segrpn_jax.datasets import cityscapes_instances, labels

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


def _draw_frame(rng):
  """labelIds, instanceIds and an RGB image of one frame: stuff bands, then objects in order."""
  label_ids = np.zeros((HEIGHT, WIDTH), np.uint8)
  label_ids[:6], label_ids[6:12], label_ids[12:] = 23, 11, 7
  label_ids[12:, :5] = 8  # sidewalk
  label_ids[20:, 30:] = 9  # parking: ignored
  label_ids[0:2, 0:3] = 4  # static: ignored
  label_ids[8:10, 20:24] = 21
  instance_ids = label_ids.astype(np.uint16)
  next_k = {}
  # Later objects occlude earlier ones; a value below 1000 is a group (crowd) or caravan-like.
  for _ in range(rng.integers(3, 7)):
    label = int(rng.choice([24, 25, 26, 27, 28, 31, 32, 33, 29, 30]))
    y0, x0 = rng.integers(0, HEIGHT - 3), rng.integers(0, WIDTH - 3)
    y1, x1 = y0 + rng.integers(2, 12), x0 + rng.integers(2, 14)
    if rng.uniform() < 0.2 and label in THING:
      value = label  # a group region such as "cargroup"
    else:
      next_k[label] = next_k.get(label, -1) + 1
      value = label * 1000 + next_k[label]
    label_ids[y0:y1, x0:x1] = label
    instance_ids[y0:y1, x0:x1] = value
  image = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
  return image, label_ids, instance_ids


def _png(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


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
  zips.mkdir()
  rng = np.random.default_rng(7)
  files, expected = {}, {"train": {}, "validation": {}}
  for split, city, seq, frame in FRAMES:
    stem = f"{city}_{seq:06d}_{frame:06d}"
    image, label_ids, instance_ids = _draw_frame(rng)
    gt = f"gtFine/{split}/{city}/{stem}_gtFine_"
    files[f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png"] = _png(image)
    files[gt + "labelIds.png"] = _png(label_ids)
    files[gt + "instanceIds.png"] = _png(instance_ids)
    files[gt + "color.png"] = _png(image)  # present in the release, not read
    files[gt + "polygons.json"] = json.dumps({"imgHeight": HEIGHT}).encode()
    tfds_split = {"train": "train", "val": "validation"}[split]
    expected[tfds_split][stem] = _expected(image, label_ids, instance_ids)
  files["leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png"] = _png(image)
  for name, data in files.items():
    (folders / name).parent.mkdir(parents=True, exist_ok=True)
    (folders / name).write_bytes(data)
  for zip_name, part in (
    (cityscapes_instances.IMAGE_ZIP, "leftImg8bit/"),
    (cityscapes_instances.LABEL_ZIP, "gtFine/"),
  ):
    with zipfile.ZipFile(zips / zip_name, "w") as archive:
      archive.writestr("README", "Cityscapes")
      for name, data in files.items():
        if name.startswith(part):
          archive.writestr(name, data)
  # The drawing must exercise every case the builder distinguishes.
  values = np.concatenate(
    [
      np.unique(np.array(Image.open(io.BytesIO(d))))
      for n, d in files.items()
      if n.endswith("instanceIds.png")
    ]
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
