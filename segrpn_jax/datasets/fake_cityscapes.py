"""A stand-in Cityscapes release at any size, in the official file layout, for tests and benchmarks.

`write_release` writes what `cityscapes_instances` reads from a manual download folder, either
as the extracted folders or as the two official zips:

  leftImg8bit/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png   RGB, 8-bit
  gtFine/{split}/{city}/{stem}_gtFine_labelIds.png                          labelIds, 8-bit
  gtFine/{split}/{city}/{stem}_gtFine_instanceIds.png                       instanceIds, 16-bit
  gtFine/{split}/{city}/{stem}_gtFine_color.png, _polygons.json             present, not read

plus one test image without labels (the official test split has no public annotations).

A frame is laid out on a grid of 24x40 cells scaled to the requested size: sky, a facade band with
a tree, road with a sidewalk, a parking area and a small static region (the last two ignored in
training), then 3-6 rectangles of random labels, later ones occluding earlier ones. About one in
five thing rectangles is a crowd group (instanceId = labelId, e.g. "cargroup"), the others are
objects (labelId * 1000 + k); caravans and trailers appear as objects that are not evaluated.
The frame generator draws as many numbers at every size (the pixel noise comes from a generator
seeded per frame), so a seed gives the same layout at every size.

The image is textured: natural colours per label (a paint per object), a brightness gradient
from sky to road, windows on the facades, and pixel noise. At 1024x2048 its PNG is 2.2 MB, the
size of a Cityscapes image (the official image zip holds about 2.2 MB per image), so the
decoder inflates as many bytes as on the real release. The frames are not photographs: a model
learns nothing of the real dataset from them. Our choice: the drawing is ours; only the file
layout, the encodings and the id conventions follow the release.
"""

import dataclasses
import json
import os
import pathlib
import zipfile
from collections.abc import Iterator, Sequence

import numpy as np

from segrpn_jax.datasets import cityscapes_instances, features, labels

GRID_HEIGHT, GRID_WIDTH = 24, 40  # cells of the layout; the smallest size a release can have
PNG_COMPRESS_LEVEL = 1  # zlib level: 8x faster than PIL's default 6 for a 15 % larger image
TEST_IMAGE = "leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png"
# Cities of the official train and val folders, used to name the frames of `release_frames`.
TRAIN_CITIES = ("aachen", "bochum", "bremen", "cologne", "darmstadt", "dusseldorf")
VAL_CITIES = ("frankfurt", "lindau", "munster")

# Natural colours (RGB) of the labelIds the layout uses, and the paints of the rectangles.
_STUFF_COLORS = {
  0: (20, 20, 22),  # unlabeled
  4: (95, 85, 70),  # static
  7: (82, 82, 86),  # road
  8: (150, 142, 134),  # sidewalk
  9: (112, 104, 108),  # parking
  11: (126, 114, 100),  # building
  21: (64, 98, 42),  # vegetation
  23: (150, 180, 212),  # sky
}
_PAINTS = np.array(
  [(25, 25, 28), (58, 60, 64), (150, 152, 155), (215, 215, 210), (40, 52, 88), (120, 32, 30),
   (62, 74, 60), (130, 112, 86), (196, 150, 40), (92, 60, 110)],
  np.float32,
)  # fmt: skip
_THING_LABELS = (24, 25, 26, 27, 28, 31, 32, 33)  # person .. bicycle
_OBJECT_LABELS = (*_THING_LABELS, 29, 30)  # and caravan, trailer: instances, not evaluated
# Pixel noise, indexed by 3 random bits: sets the PNG size (2.2 MB at 1024x2048, as Cityscapes').
_NOISE_LEVELS = np.array([-1, -1, 0, 0, 0, 0, 1, 1], np.float32)


@dataclasses.dataclass(frozen=True)
class Frame:
  """One drawn frame of the release.

  Attributes:
    split: Folder of the release: "train", "val" (or "test").
    city: City folder, e.g. "aachen".
    stem: "{city}_{seq:06d}_{frame:06d}", the frame's name and tfds image_id.
    image: uint8 [H, W, 3].
    label_ids: uint8 [H, W] labelIds.
    instance_ids: uint16 [H, W] instanceIds.
  """

  split: str
  city: str
  stem: str
  image: np.ndarray
  label_ids: np.ndarray
  instance_ids: np.ndarray


def release_frames(num_train: int, num_val: int) -> list[tuple[str, str, int, int]]:
  """Names of `num_train` train and `num_val` val frames, spread over a few real city names.

  Returns:
    [(split folder, city, sequence, frame)], the `frames` argument of `write_release`.
  """
  frames = []
  for split, cities, count in (("train", TRAIN_CITIES, num_train), ("val", VAL_CITIES, num_val)):
    for i in range(count):
      frames.append((split, cities[i % len(cities)], i // len(cities), 19 + i))
  return frames


def draw_frame(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, ...]:
  """The image, labelIds and instanceIds of one frame (layout in the module docstring).

  Args:
    rng: Source of every random number; how many it draws does not depend on the size.
    height: Image height, at least GRID_HEIGHT.
    width: Image width, at least GRID_WIDTH.

  Returns:
    (image uint8 [H, W, 3], label_ids uint8 [H, W], instance_ids uint16 [H, W]).
  """
  if height < GRID_HEIGHT or width < GRID_WIDTH:
    raise ValueError(
      f"fake_cityscapes: {height}x{width} is smaller than the {GRID_HEIGHT}x{GRID_WIDTH} layout"
    )

  def rows(a, b):  # cells -> pixel rows
    return slice(a * height // GRID_HEIGHT, b * height // GRID_HEIGHT)

  def cols(a, b):
    return slice(a * width // GRID_WIDTH, b * width // GRID_WIDTH)

  label_ids = np.full((height, width), 7, np.uint8)  # road
  label_ids[rows(0, 6)], label_ids[rows(6, 12)] = 23, 11  # sky, building
  label_ids[rows(12, 24), cols(0, 5)] = 8  # sidewalk
  label_ids[rows(20, 24), cols(30, 40)] = 9  # parking: ignored
  label_ids[rows(0, 2), cols(0, 3)] = 4  # static: ignored
  label_ids[rows(8, 10), cols(20, 24)] = 21  # vegetation
  instance_ids = label_ids.astype(np.uint16)
  next_k = {}
  # Later objects occlude earlier ones; a value below 1000 is a group (crowd).
  for _ in range(rng.integers(3, 7)):
    label = int(rng.choice(_OBJECT_LABELS))
    y0, x0 = rng.integers(0, GRID_HEIGHT - 3), rng.integers(0, GRID_WIDTH - 3)
    y1, x1 = y0 + rng.integers(2, 12), x0 + rng.integers(2, 14)
    if rng.uniform() < 0.2 and label in _THING_LABELS:
      value = label  # a group region such as "cargroup"
    else:
      next_k[label] = next_k.get(label, -1) + 1
      value = label * 1000 + next_k[label]
    label_ids[rows(y0, y1), cols(x0, x1)] = label
    instance_ids[rows(y0, y1), cols(x0, x1)] = value
  # As many numbers at every size (so the next frame's layout does not depend on the size): one
  # byte per cell and channel, which seed the generator of the pixel noise.
  cell_bits = rng.integers(0, 256, (GRID_HEIGHT, GRID_WIDTH, 3), dtype=np.uint8)
  noise_rng = np.random.default_rng(cell_bits.ravel())
  noise_bits = noise_rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  return _texture(label_ids, instance_ids, noise_bits), label_ids, instance_ids


def _texture(label_ids, instance_ids, noise_bits) -> np.ndarray:
  """Colours by label and object, a vertical gradient, facade windows and pixel noise."""
  height, width = label_ids.shape
  # One colour per instanceId value: the stuff colours, a paint per object or group.
  color_of_value = np.zeros((int(instance_ids.max()) + 1, 3), np.float32)
  for label_id, color in _STUFF_COLORS.items():
    color_of_value[label_id] = color
  values = np.flatnonzero(np.bincount(instance_ids.ravel()))
  objects = values[np.isin(np.where(values >= 1000, values // 1000, values), _OBJECT_LABELS)]
  color_of_value[objects] = _PAINTS[(objects * 7 + objects // 1000) % len(_PAINTS)]
  image = color_of_value[instance_ids]
  image *= np.linspace(1.12, 0.82, height, dtype=np.float32)[:, None, None]
  # Windows: a dark cell in each period of the facade, its period scaled with the image.
  py, px = max(2, height // GRID_HEIGHT), max(2, width // 80)
  window = ((np.arange(height) % py) < py // 2)[:, None] & ((np.arange(width) % px) < px // 2)
  image[(label_ids == 11) & window] *= 0.55
  image += _NOISE_LEVELS[noise_bits >> 5]
  return np.clip(image + 0.5, 0, 255).astype(np.uint8)


def draw_frames(
  frames: Sequence[tuple[str, str, int, int]], height: int, width: int, seed: int = 0
) -> Iterator[Frame]:
  """Draws `frames` in order from one generator seeded with `seed` (what write_release writes).

  Args:
    frames: [(split folder, city, sequence, frame)].
    height: Image height.
    width: Image width.
    seed: NumPy seed.

  Yields:
    One Frame per entry of `frames`.
  """
  rng = np.random.default_rng(seed)
  for split, city, sequence, frame in frames:
    image, label_ids, instance_ids = draw_frame(rng, height, width)
    stem = f"{city}_{sequence:06d}_{frame:06d}"
    yield Frame(split, city, stem, image, label_ids, instance_ids)


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of a uint8 [H, W] / [H, W, 3] or uint16 [H, W] array at PNG_COMPRESS_LEVEL."""
  return features.encode_png(array, compress_level=PNG_COMPRESS_LEVEL)


def frame_files(frame: Frame) -> dict[str, bytes]:
  """The release-relative names and bytes of one frame's five files."""
  height, width = frame.label_ids.shape
  gt = f"gtFine/{frame.split}/{frame.city}/{frame.stem}_gtFine_"
  polygons = {"imgHeight": height, "imgWidth": width, "objects": []}
  return {
    f"leftImg8bit/{frame.split}/{frame.city}/{frame.stem}_leftImg8bit.png": encode_png(frame.image),
    gt + "labelIds.png": encode_png(frame.label_ids),
    gt + "instanceIds.png": encode_png(frame.instance_ids),
    gt + "color.png": encode_png(labels.label_id_colors()[frame.label_ids]),
    gt + "polygons.json": json.dumps(polygons).encode(),
  }


def write_release(
  root: str | os.PathLike,
  frames: Sequence[tuple[str, str, int, int]],
  height: int,
  width: int,
  seed: int = 0,
  as_zips: bool = False,
) -> list[str]:
  """Writes a release of `frames` into `root`, ready to be a manual_dir of cityscapes_instances.

  Frames are drawn and written one at a time, so memory does not grow with their number.

  Args:
    root: Folder to write into (created if missing).
    frames: [(split folder "train" | "val", city, sequence, frame)], e.g. `release_frames(...)`.
    height: Image height, at least GRID_HEIGHT (Cityscapes: 1024).
    width: Image width, at least GRID_WIDTH (Cityscapes: 2048).
    seed: NumPy seed of the drawing (`draw_frames`).
    as_zips: Write the two official zips (IMAGE_ZIP, LABEL_ZIP; members stored, not
      compressed) instead of the folders leftImg8bit/ and gtFine/.

  Returns:
    The release-relative names written, in order (the test image last).
  """
  root = pathlib.Path(root)
  root.mkdir(parents=True, exist_ok=True)
  archives = {}
  if as_zips:
    for zip_name, part in (
      (cityscapes_instances.IMAGE_ZIP, "leftImg8bit/"),
      (cityscapes_instances.LABEL_ZIP, "gtFine/"),
    ):
      archives[part] = zipfile.ZipFile(root / zip_name, "w")
      archives[part].writestr("README", "Cityscapes")

  def write(name: str, data: bytes) -> None:
    if as_zips:
      archives[name.split("/")[0] + "/"].writestr(name, data)
    else:
      (root / name).parent.mkdir(parents=True, exist_ok=True)
      (root / name).write_bytes(data)

  names, image = [], None
  try:
    for frame in draw_frames(frames, height, width, seed):
      for name, data in frame_files(frame).items():
        write(name, data)
        names.append(name)
      image = frame.image
    if image is not None:  # the test split: an image without annotations
      write(TEST_IMAGE, encode_png(image))
      names.append(TEST_IMAGE)
  finally:
    for archive in archives.values():
      archive.close()
  return names
