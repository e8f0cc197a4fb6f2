"""fake_cityscapes: the drawn release's layout, its files, and the pipeline reading it.

The builder's own output is checked against the drawing in test_cityscapes_builder.py (24x40);
here a release of another size goes through cityscapes_instances and the input pipeline, and
scripts/bench_input.py's --cityscapes_release path runs at a tiny size.
"""

import importlib.util
import json
import os
import pathlib
import re
import zipfile

import numpy as np
import pytest
from PIL import Image

from segrpn_jax import input_pipeline
from segrpn_jax.configs import default
from segrpn_jax.datasets import cityscapes_instances, fake_cityscapes, labels
from segrpn_jax.pretrained import PIXEL_MEAN, PIXEL_STD

ROOT = pathlib.Path(__file__).resolve().parents[1]
THING_LABEL_IDS = (24, 25, 26, 27, 28, 31, 32, 33)  # person .. bicycle: classes 1..8


def test_a_seed_gives_the_same_layout_at_every_size():
  small = list(fake_cityscapes.draw_frames(fake_cityscapes.release_frames(2, 1), 24, 40, seed=3))
  large = list(fake_cityscapes.draw_frames(fake_cityscapes.release_frames(2, 1), 48, 120, seed=3))
  for small_frame, frame in zip(small, large, strict=True):
    assert frame.stem == small_frame.stem
    assert frame.image.shape == (48, 120, 3) and frame.image.dtype == np.uint8
    for key in ("label_ids", "instance_ids"):
      scaled = np.repeat(np.repeat(getattr(small_frame, key), 2, 0), 3, 1)
      np.testing.assert_array_equal(getattr(frame, key), scaled)
    assert frame.label_ids.dtype == np.uint8 and frame.instance_ids.dtype == np.uint16


def test_release_files_follow_the_official_layout(tmp_path):
  frames = fake_cityscapes.release_frames(2, 1)
  names = fake_cityscapes.write_release(tmp_path / "folders", frames, 24, 40, seed=5)
  zipped = fake_cityscapes.write_release(tmp_path / "zips", frames, 24, 40, seed=5, as_zips=True)
  assert zipped == names and len(names) == 3 * 5 + 1
  on_disk = {str(p.relative_to(tmp_path / "folders")) for p in (tmp_path / "folders").rglob("*.*")}
  assert on_disk == set(names)
  in_zips = set()
  for zip_name in (cityscapes_instances.IMAGE_ZIP, cityscapes_instances.LABEL_ZIP):
    with zipfile.ZipFile(tmp_path / "zips" / zip_name) as archive:
      in_zips |= {n for n in archive.namelist() if n != "README"}
      part = "leftImg8bit/" if zip_name == cityscapes_instances.IMAGE_ZIP else "gtFine/"
      assert all(n.startswith(part) for n in archive.namelist() if n != "README")
  assert in_zips == set(names)
  assert names[-1] == "leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png"
  assert {n.split("/")[2] for n in names[:-1]} == {"aachen", "bochum", "frankfurt"}
  stem = r"(?P<city>[a-z]+)/(?P=city)_\d{6}_\d{6}"
  patterns = (
    rf"leftImg8bit/(train|val)/{stem}_leftImg8bit\.png",
    rf"gtFine/(train|val)/{stem}_gtFine_(labelIds|instanceIds|color)\.png",
    rf"gtFine/(train|val)/{stem}_gtFine_polygons\.json",
  )
  for name in names[:-1]:
    assert any(re.fullmatch(pattern, name) for pattern in patterns), name
  # The PNGs decode to the drawing, with the release's modes and bit depths.
  for frame in fake_cityscapes.draw_frames(frames, 24, 40, seed=5):
    base = tmp_path / "folders" / "gtFine" / frame.split / frame.city / f"{frame.stem}_gtFine_"
    image_path = f"leftImg8bit/{frame.split}/{frame.city}/{frame.stem}_leftImg8bit.png"
    with Image.open(tmp_path / "folders" / image_path) as image:
      assert image.mode == "RGB"
      np.testing.assert_array_equal(np.array(image), frame.image)
    with Image.open(f"{base}labelIds.png") as label_ids:
      assert label_ids.mode == "L"
      np.testing.assert_array_equal(np.array(label_ids), frame.label_ids)
    instance_ids = np.array(Image.open(f"{base}instanceIds.png"))
    assert instance_ids.dtype == np.uint16
    np.testing.assert_array_equal(instance_ids, frame.instance_ids)
    color = np.array(Image.open(f"{base}color.png"))
    assert np.all(color[frame.label_ids == 7] == (128, 64, 128))  # road's official colour
    polygons = json.loads(pathlib.Path(f"{base}polygons.json").read_text())
    assert (polygons["imgHeight"], polygons["imgWidth"]) == (24, 40)


def test_an_image_at_cityscapes_size_is_a_cityscapes_sized_png():
  rng = np.random.default_rng(0)
  image, label_ids, _ = fake_cityscapes.draw_frame(rng, 1024, 2048)
  size = len(fake_cityscapes.encode_png(image))
  assert 1.8e6 < size < 2.7e6, size  # the official zip: 11 GB for 5000 images, 2.2 MB each
  # Textured, not flat: the road alone holds several values per channel.
  assert len(np.unique(image[label_ids == 7][:, 0])) >= 5


@pytest.fixture(scope="module")
def pipeline_release(tmp_path_factory):
  """A 2-frame release at 64x128 (one train, one val frame), as zips, and its drawing."""
  root = tmp_path_factory.mktemp("fake_cityscapes")
  frames = fake_cityscapes.release_frames(1, 1)
  fake_cityscapes.write_release(root / "release", frames, 64, 128, seed=11, as_zips=True)
  drawn = {f.split: f for f in fake_cityscapes.draw_frames(frames, 64, 128, seed=11)}
  config = default.get_config()
  config.data.dataset = "cityscapes_instances"
  config.data.data_dir = str(root / "tensorflow_datasets")
  config.data.manual_dir = str(root / "release")
  config.data.image_size = (64, 128)  # the stored size: no resizing, exact values
  config.train.batch_size = config.eval.batch_size = 2
  return config, drawn


def _reference(frame):
  """The batch contract's maps and boxes of a frame, with one loop over its instanceIds."""
  semantic = labels.label_id_to_train_id_lut()[frame.label_ids].astype(np.int32)
  crowd = (frame.instance_ids < 1000) & np.isin(frame.instance_ids, THING_LABEL_IDS)
  boxes, classes = [], []
  for value in np.unique(frame.instance_ids):
    if value >= 1000 and value // 1000 in THING_LABEL_IDS:
      rows, cols = np.nonzero(frame.instance_ids == value)
      boxes.append([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])
      classes.append(THING_LABEL_IDS.index(value // 1000) + 1)
  image = (frame.image / 255.0 - PIXEL_MEAN) / PIXEL_STD
  return image, semantic, crowd, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes)


def test_the_pipeline_reads_the_release(pipeline_release):
  config, drawn = pipeline_release
  builder = input_pipeline.get_builder(config)  # builds from the zips
  assert builder.info.splits["train"].num_examples == 1
  assert builder.info.splits["validation"].num_examples == 1

  (batch,) = list(input_pipeline.create_eval_dataset(config, builder=builder))
  image, semantic, crowd, boxes, classes = _reference(drawn["val"])
  assert batch["image_id"][0].decode() == drawn["val"].stem
  np.testing.assert_array_equal(batch["example_mask"], [True, False])  # padded to the batch
  np.testing.assert_allclose(batch["image"][0], image, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(batch["semantic"][0], semantic)
  np.testing.assert_array_equal(batch["crowd"][0], crowd)
  k = len(classes)
  assert k >= 1 and batch["valid"][0].sum() == k
  np.testing.assert_allclose(batch["boxes"][0, :k], boxes, atol=1e-4)
  np.testing.assert_array_equal(batch["classes"][0, :k], classes)

  # Training: both examples of a batch are the one train frame, each as drawn or mirrored.
  train = next(input_pipeline.create_train_iterator(config, builder=builder))
  image, semantic, _, boxes, classes = _reference(drawn["train"])
  k = len(classes)
  for b in range(2):
    flipped = not np.allclose(train["image"][b], image, rtol=1e-5, atol=1e-5)
    want_image = image[:, ::-1] if flipped else image
    np.testing.assert_allclose(train["image"][b], want_image, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(train["semantic"][b], semantic[:, ::-1] if flipped else semantic)
    want_boxes = np.stack([128 - boxes[:, 2], boxes[:, 1], 128 - boxes[:, 0], boxes[:, 3]], 1)
    np.testing.assert_allclose(train["boxes"][b, :k], want_boxes if flipped else boxes, atol=1e-4)
    np.testing.assert_array_equal(train["classes"][b, :k], classes)


def test_bench_input_times_a_release(tmp_path, capsys):
  spec = importlib.util.spec_from_file_location("bench_input", ROOT / "scripts" / "bench_input.py")
  bench = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench)
  bench.main(
    [
      "--cityscapes_release=3",  # 2 train, 1 val frame
      "--release_size=48,80",
      "--image_size=32,64",  # resized, as 1024x2048 -> 512x1024
      "--batch_size=2",
      "--batches=2",
      "--warmup=1",
      "--eval_passes=2",
      f"--manual_dir={tmp_path / 'release'}",
      f"--data_dir={tmp_path / 'data'}",
    ]
  )
  out = capsys.readouterr().out
  cores = len(os.sched_getaffinity(0))
  assert f"{cores} usable CPU cores" in out
  rates = r"[\d.]+ images/s, [\d.]+ per core, [\d.]+ images per CPU-second \(.+\), over "
  assert re.search(r"train iterator: " + rates + "2 batches", out)
  assert re.search(r"eval pass: " + rates + r"2 images \(2 pass", out)
  assert len(list((tmp_path / "release" / "leftImg8bit" / "train").rglob("*.png"))) == 2
  assert (tmp_path / "data" / "cityscapes_instances").is_dir()
