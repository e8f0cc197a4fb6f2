"""segrpn_jax.predict on a folder of mixed image files with a tiny 2-step run: the command (in
process), its files, and its numbers against api.predict on the same resized inputs."""

import json
import os
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image

from segrpn_jax import api, errors, predict
from segrpn_jax.datasets import labels
from segrpn_jax.pretrained import PIXEL_MEAN, PIXEL_STD

BATCH_SIZE = 2  # the batch size of the run's evaluation: api.predict is compiled once for both

# name -> (width, height) of the readable test images; sorted order gives ids 1..7.
SIZES = {
  "a_rgb.png": (150, 100),
  "b_gray.png": (320, 240),
  "c_rgba.png": (200, 260),
  "d_16bit.png": (257, 129),
  "e_photo.jpg": (640, 480),
  "g_palette.png": (90, 130),
  "h_large.png": (1300, 900),
}
BROKEN = "f_broken.png"


def _scene(width, height, seed):
  """A street-like picture: a road-grey lower half, a sky-blue top and a few coloured blocks."""
  rng = np.random.default_rng(seed)
  image = np.zeros((height, width, 3), np.uint8)
  image[: height // 2] = (70, 130, 180)
  image[height // 2 :] = (128, 64, 128)
  for _ in range(3):
    x, y = rng.integers(0, width // 2), rng.integers(height // 3, height // 2 + 1)
    image[y : y + height // 4, x : x + width // 6] = rng.integers(0, 256, 3)
  return image


@pytest.fixture(scope="module")
def run(tiny_run, tmp_path_factory):
  """A copy of the shared 2-step tiny run (tests/conftest.py), its config unchanged: its
  evaluation compiled the program the command runs (api.predict at the same batch size)."""
  workdir = str(tmp_path_factory.mktemp("run") / "run")
  shutil.copytree(tiny_run[1], workdir)
  return workdir


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
  folder = tmp_path_factory.mktemp("images")
  for seed, (name, (width, height)) in enumerate(SIZES.items()):
    rgb = _scene(width, height, seed)
    if name == "b_gray.png":
      Image.fromarray(rgb).convert("L").save(folder / name)
    elif name == "c_rgba.png":
      Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)])).save(folder / name)
    elif name == "d_16bit.png":
      gray16 = np.linspace(0, 65535, width * height).reshape(height, width).astype(np.uint16)
      Image.fromarray(gray16).save(folder / name)
    elif name == "g_palette.png":
      Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(
        folder / name
      )
    else:
      Image.fromarray(rgb).save(folder / name, quality=90)
  (folder / BROKEN).write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
  (folder / "notes.txt").write_text("not an image; ignored by extension")
  return folder


@pytest.fixture(scope="module")
def predicted(run, image_dir, tmp_path_factory):
  """The command run in process; it must fail (status 1) because of the broken file."""
  output = tmp_path_factory.mktemp("out")
  argv = ["predict", f"--workdir={run}", f"--input={image_dir}", f"--output={output}",
          f"--batch_size={BATCH_SIZE}"]  # fmt: skip
  flag_values = flags.FlagValues()
  predict.define_flags(flag_values)
  flag_values(argv)
  with pytest.raises(SystemExit) as exit_info:
    predict.main(argv[:1], flag_values)
  return output, exit_info.value.code


def test_load_image_makes_8_bit_rgb_of_every_mode(image_dir):
  for name, (width, height) in SIZES.items():
    rgb = predict.load_image(str(image_dir / name))
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8, name
  gray16 = np.asarray(Image.open(image_dir / "d_16bit.png")).astype(np.int64)
  rgb16 = predict.load_image(str(image_dir / "d_16bit.png"))
  np.testing.assert_array_equal(rgb16[..., 1], gray16 >> 8)  # by the 16-bit range, not the max
  assert rgb16[-1, -1, 0] == 255 and rgb16[0, 0, 0] == 0
  dark = np.full((4, 4), 1000, np.uint16)  # a dark 16-bit image stays dark
  Image.fromarray(dark).save(image_dir.parent / "dark16.png")
  assert predict.load_image(str(image_dir.parent / "dark16.png")).max() == 1000 >> 8
  rgba = predict.load_image(str(image_dir / "c_rgba.png"))
  np.testing.assert_array_equal(rgba, _scene(200, 260, 2))  # alpha dropped, colours kept
  with pytest.raises(OSError):  # Pillow: "Truncated File Read"
    predict.load_image(str(image_dir / BROKEN))


def test_preprocess_matches_the_input_pipeline_resize():
  rgb = _scene(300, 170, 0)
  expected = (tf.image.resize(rgb.astype(np.float32), (64, 128)).numpy() / 255.0 - PIXEL_MEAN) / (
    PIXEL_STD
  )
  np.testing.assert_allclose(predict.preprocess(rgb, (64, 128)), expected, atol=1e-4)


def test_train_id_to_label_id_lut_inverts_the_label_table():
  lut = predict.train_id_to_label_id_lut()
  forward = labels.label_id_to_train_id_lut()
  for train_id in range(labels.NUM_TRAIN_IDS):
    assert forward[lut[train_id]] == train_id
  assert (lut[0], lut[8], lut[13], lut[18], lut[255]) == (
    7,
    21,
    26,
    33,
    0,
  )  # road, vegetation, car, bicycle


def test_list_images_of_a_folder_a_glob_and_a_file(image_dir):
  paths, root = predict.list_images(str(image_dir))
  assert [os.path.basename(p) for p in paths] == sorted([*SIZES, BROKEN])
  assert root == str(image_dir)
  paths, _ = predict.list_images(str(image_dir / "*.jpg"))
  assert [os.path.basename(p) for p in paths] == ["e_photo.jpg"]
  assert predict.list_images(str(image_dir / "a_rgb.png")) == ([str(image_dir / "a_rgb.png")],
                                                               str(image_dir))  # fmt: skip
  with pytest.raises(errors.InputFileError, match=r"names no image files"):
    predict.list_images(str(image_dir / "*.tif"))
  with pytest.raises(errors.InputFileError, match=r"a\.png.*a\.jpg|a\.jpg.*a\.png"):
    predict.relative_names(["x/a.jpg", "x/a.png"], "x")


def test_the_broken_file_fails_the_command_after_every_other_image(predicted):
  output, code = predicted
  assert isinstance(code, str)  # SystemExit with a message: exit status 1
  assert BROKEN in code and "1 of 8 images could not be read" in code
  with open(output / "detections.json") as f:
    images = json.load(f)["images"]
  ids = {entry["file_name"]: entry["id"] for entry in images}
  assert ids == {name: i + 1 + (name > BROKEN) for i, name in enumerate(sorted(SIZES))}
  for entry in images:
    width, height = SIZES[entry["file_name"]]
    assert (entry["width"], entry["height"]) == (width, height)
    stem = os.path.splitext(entry["file_name"])[0]
    for folder, suffix in (("semantic", "_labelIds"), ("foreground", "")):
      with Image.open(output / folder / f"{stem}{suffix}.png") as png:
        assert png.size == (width, height) and png.mode == "L", (folder, stem)
    with Image.open(output / "vis" / f"{stem}.png") as vis:
      assert vis.size == (2 * width, height)  # detections beside the semantic overlay
  assert not list((output / "semantic").glob("f_broken*"))


def test_label_ids_are_evaluated_cityscapes_classes(predicted):
  output, _ = predicted
  evaluated = {label.id for label in labels.LABELS if 0 <= label.train_id < labels.IGNORE_LABEL}
  seen = set()
  for path in (output / "semantic").glob("*_labelIds.png"):
    seen |= set(np.unique(np.asarray(Image.open(path))).tolist())
  assert seen and seen <= evaluated


def test_boxes_are_api_predict_boxes_scaled_to_each_image(run, image_dir, predicted):
  output, _ = predicted
  with open(output / "detections.json") as f:
    coco = json.load(f)
  images = {entry["id"]: entry for entry in coco["images"]}
  detections = coco["annotations"]
  config, model, variables = api.load(run)
  net_h, net_w = config.data.image_size
  checked = 0
  for image_id, entry in images.items():
    width, height = entry["width"], entry["height"]
    mine = [d for d in detections if d["image_id"] == image_id]
    for d in mine:
      x, y, w, h = d["bbox"]
      assert 0 <= x <= x + w <= width and 0 <= y <= y + h <= height, d
      assert 1 <= d["category_id"] <= labels.NUM_THING_CLASSES and 0 <= d["score"] <= 1
    # The same resized input, alone in a zero-padded batch, through api.predict.
    rgb = predict.load_image(str(image_dir / entry["file_name"]))
    batch = np.zeros((BATCH_SIZE, net_h, net_w, 3), np.float32)
    batch[0] = predict.preprocess(rgb, (net_h, net_w))
    det = api.predict(model, variables, jnp.asarray(batch))["detections"]
    valid = np.asarray(det["valid"][0])
    boxes = np.asarray(det["boxes"][0])[valid] * np.array([width / net_w, height / net_h] * 2)
    boxes = np.clip(boxes, 0, [width, height, width, height])
    got = np.array([[x, y, x + w, y + h] for x, y, w, h in (d["bbox"] for d in mine)])
    assert len(got) == len(boxes)
    if len(got):
      np.testing.assert_allclose(got, boxes, rtol=1e-5, atol=1e-3)
      np.testing.assert_allclose([d["score"] for d in mine], np.asarray(det["scores"][0])[valid],
                                 rtol=1e-5)  # fmt: skip
      checked += len(got)
  assert checked > 0, "the tiny run should detect something to compare"


def test_detections_json_is_a_coco_file_with_the_thing_categories(predicted):
  from faster_coco_eval import COCO

  output, _ = predicted
  with open(output / "detections.json") as f:
    coco = json.load(f)
  assert coco["categories"] == [
    {"id": 1, "name": "person", "supercategory": "human"},
    {"id": 2, "name": "rider", "supercategory": "human"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 4, "name": "truck", "supercategory": "vehicle"},
    {"id": 5, "name": "bus", "supercategory": "vehicle"},
    {"id": 6, "name": "train", "supercategory": "vehicle"},
    {"id": 7, "name": "motorcycle", "supercategory": "vehicle"},
    {"id": 8, "name": "bicycle", "supercategory": "vehicle"},
  ]
  annotations = coco["annotations"]
  assert [a["id"] for a in annotations] == list(range(1, len(annotations) + 1))
  assert [a["image_id"] for a in annotations] == sorted(a["image_id"] for a in annotations)
  for a in annotations:
    _, _, w, h = a["bbox"]
    assert a["area"] == pytest.approx(w * h, rel=1e-6) and a["iscrowd"] == 0
  # The file reads as a COCO dataset, and its annotations as COCO results against it.
  loaded = COCO(str(output / "detections.json"))
  assert sorted(loaded.getCatIds()) == list(range(1, 9))
  assert len(loaded.getAnnIds()) == len(annotations) and len(loaded.getImgIds()) == len(SIZES)
  results = loaded.loadRes(annotations)
  assert len(results.getAnnIds()) == len(annotations)


def test_the_score_threshold_thins_the_pictures_not_the_json(run, image_dir, tmp_path):
  config, model, variables = api.load(run)
  path = str(image_dir / "a_rgb.png")
  rgb = predict.load_image(path)
  written = {}
  for threshold in (0.0, 1.0):
    out = tmp_path / f"t{threshold}"
    predict.predict_images(config, model, variables, [path], str(out), batch_size=BATCH_SIZE,
                           progress=False, score_threshold=threshold)  # fmt: skip
    with open(out / "detections.json") as f:
      annotations = json.load(f)["annotations"]
    left = np.asarray(Image.open(out / "vis" / "a_rgb.png"))[:, : rgb.shape[1]]
    written[threshold] = annotations, left
  (every, all_drawn), (same, none_drawn) = written[0.0], written[1.0]
  assert every == same and every  # the JSON keeps every detection at any threshold
  assert max(a["score"] for a in every) < 1.0
  np.testing.assert_array_equal(none_drawn, rgb)  # nothing scores 1: the bare image
  assert (all_drawn != rgb).any()  # threshold 0: every box drawn


def _main_with(argv: list[str]):
  flag_values = flags.FlagValues()
  predict.define_flags(flag_values)
  flag_values(["predict", *argv])
  return lambda: predict.main(["predict"], flag_values)


@pytest.fixture
def no_model_loading(monkeypatch):
  """api.load fails the test: the argument checks must come before the model is loaded."""

  def fail(*args, **kwargs):
    raise AssertionError("the model was loaded before the arguments were checked")

  monkeypatch.setattr(predict.api, "load", fail)


def test_bad_arguments_are_one_message_before_the_model_is_loaded(
  run, image_dir, tmp_path, no_model_loading, capsys
):
  (tmp_path / "a_file").write_text("x")
  (tmp_path / "empty").mkdir()
  (tmp_path / "not_a_run").mkdir()
  out = f"--output={tmp_path}/o"
  cases = [
    ([f"--workdir={tmp_path}/nowhere", f"--input={image_dir}", out], errors.InputFileError,
     r"--workdir '.*nowhere' is not a folder"),
    ([f"--workdir={tmp_path}/not_a_run", f"--input={image_dir}", out], errors.WorkdirError,
     r"holds no training run \(config\.json not found\)"),
    ([f"--workdir={run}", f"--input={image_dir}", f"--output={tmp_path}/a_file"],
     errors.InputFileError, r"--output '.*a_file' is a file: give a folder"),
    ([f"--workdir={run}", f"--input={tmp_path}/empty", out], errors.InputFileError,
     r"--input '.*empty' names no image files"),
  ]  # fmt: skip
  for argv, kind, message in cases:
    main = _main_with(argv)
    with pytest.raises(kind, match=message):
      main()
    # Through errors.run, as `python -m segrpn_jax.predict` runs it: one block, status 2.
    assert errors.run(main) == errors.EXIT_USER_ERROR
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: --") and "Traceback" not in stderr, stderr
  assert not (tmp_path / "o").exists()  # nothing written


def test_score_threshold_and_batch_size_flags_are_bounded():
  for argv in (["--score_threshold=1.5"], ["--score_threshold=-0.1"], ["--batch_size=0"]):
    flag_values = flags.FlagValues()
    predict.define_flags(flag_values)
    with pytest.raises(flags.IllegalFlagValueError):
      flag_values(["predict", *argv])


def test_a_workdir_without_a_checkpoint_is_one_readable_error(tmp_path, run, image_dir):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "config.json").write_bytes((pathlib.Path(run) / "config.json").read_bytes())
  main = _main_with([f"--workdir={workdir}", f"--input={image_dir}", f"--output={tmp_path}/o"])
  with pytest.raises(errors.UserError, match=r"no checkpoint in .*checkpoints"):
    main()
