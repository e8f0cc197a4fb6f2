"""cityscapes_instances: Cityscapes fine annotations with instance boxes and crowd regions.

TFDS's own `cityscapes` builder has semantic labels only; detection needs the objects of the
16-bit `*_gtFine_instanceIds.png`. This builder reads the official release from the manual
download folder and writes the features of `features.py`:

- `semantic`: `*_gtFine_labelIds.png` mapped to trainIds (255 = ignore).
- `instances` / `instance_map`: every instanceId labelId * 1000 + k of an evaluated thing class
  (person, rider, car, truck, bus, train, motorcycle, bicycle) is one instance, listed in
  ascending instanceId order; its box is the extent of its pixels.
- `crowd`: pixels whose instanceId is a thing labelId below 1000, i.e. group regions such as
  "cargroup" that the annotators did not split into objects.
- Caravan and trailer have instances but are not evaluated: they are neither boxes, nor crowd,
  nor foreground (their trainId is 255).

Splits: train (2975 images) and validation (500, the official `val`). The official test split is
not built: its annotations are not public (the released gtFine test PNGs are placeholders), so it
cannot supply boxes or labels; test-server predictions need only the images.
"""

import io
import re
import zipfile

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from segrpn_jax.datasets import features, labels

IMAGE_ZIP = "leftImg8bit_trainvaltest.zip"
LABEL_ZIP = "gtFine_trainvaltest.zip"
SPLIT_FOLDERS = {"train": "train", "validation": "val"}  # tfds split -> folder of the release

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Cityscapes needs a registered account: create one at https://www.cityscapes-dataset.com/ ,
log in, and from its Downloads page fetch
  {IMAGE_ZIP}  (11 GB, the left 8-bit images; package id 3)
  {LABEL_ZIP}     (241 MB, the fine annotations; package id 1)
Put the two zips into the manual_dir (config.data.manual_dir, or
tfds.download.DownloadConfig(manual_dir=...)), or extract them there so that it holds the
folders leftImg8bit/ and gtFine/. Only train and val are built; test has no public labels.
"""

_IMAGE_NAME = re.compile(
  r"^leftImg8bit/(?P<split>[^/]+)/(?P<city>[^/]+)/(?P<stem>[^/]+)_leftImg8bit\.png$"
)


class ReleasePart:
  """One part of the release (leftImg8bit or gtFine), as an extracted folder or as the zip.

  Args:
    manual_dir: The manual download folder.
    folder: "leftImg8bit" or "gtFine".
    zip_name: The official zip holding `folder/`.

  Raises:
    FileNotFoundError: if neither `manual_dir/folder` nor `manual_dir/zip_name` exists.
    ValueError: if the zip is corrupt.
  """

  def __init__(self, manual_dir: epath.PathLike, folder: str, zip_name: str):
    manual_dir = epath.Path(manual_dir)
    self._folder_path = manual_dir / folder
    self._zip_path = manual_dir / zip_name
    self._zip = None
    if self._folder_path.is_dir():
      return
    if not self._zip_path.exists():
      raise FileNotFoundError(
        f"cityscapes_instances: neither {self._folder_path}/ nor {self._zip_path} exists.\n"
        + MANUAL_DOWNLOAD_INSTRUCTIONS
      )
    try:
      self._zip = zipfile.ZipFile(self._zip_path.open("rb"))
    except (zipfile.BadZipFile, OSError) as e:
      raise ValueError(f"cityscapes_instances: {self._zip_path} is not a valid zip ({e})") from e

  def names(self, split_folder: str) -> list[str]:
    """Sorted release-relative names ("leftImg8bit/train/aachen/...") of the files of a split."""
    folder = self._folder_path.name
    if self._zip is not None:
      prefix = f"{folder}/{split_folder}/"
      return sorted(n for n in self._zip.namelist() if n.startswith(prefix) and not n.endswith("/"))
    root = self._folder_path / split_folder
    if not root.is_dir():
      return []
    base = self._folder_path.parent
    return sorted(str(p.relative_to(base)) for p in root.glob("*/*") if p.is_file())

  def describe(self, name: str) -> str:
    """Where `name` lives, for error messages."""
    return (
      f"{self._zip_path}:{name}" if self._zip is not None else str(self._folder_path.parent / name)
    )

  def read(self, name: str) -> bytes:
    """The bytes of a release-relative file.

    Raises:
      FileNotFoundError: naming the file, if the release lacks it.
      ValueError: naming the file, if it cannot be read (corrupt zip member).
    """
    try:
      if self._zip is not None:
        return self._zip.read(name)
      return (self._folder_path.parent / name).read_bytes()
    except (KeyError, FileNotFoundError) as e:
      raise FileNotFoundError(f"cityscapes_instances: missing {self.describe(name)}") from e
    except (zipfile.BadZipFile, OSError, EOFError) as e:
      raise ValueError(f"cityscapes_instances: cannot read {self.describe(name)} ({e})") from e


def open_release(manual_dir: epath.PathLike) -> tuple[ReleasePart, ReleasePart]:
  """The images and the annotations of the release in `manual_dir`.

  Args:
    manual_dir: The manual download folder.

  Returns:
    (images, annotations): the leftImg8bit and gtFine parts, each a folder or the zip.

  Raises:
    FileNotFoundError: naming the folder and the zip of a part that is missing.
  """
  images = ReleasePart(manual_dir, "leftImg8bit", IMAGE_ZIP)
  return images, ReleasePart(manual_dir, "gtFine", LABEL_ZIP)


def _decode_png(data: bytes, where: str) -> np.ndarray:
  try:
    with Image.open(io.BytesIO(data)) as image:
      return np.array(image)
  except (OSError, ValueError, SyntaxError) as e:  # PIL raises these on truncated/corrupt files
    raise ValueError(f"cityscapes_instances: corrupt image {where} ({e})") from e


def _image_size(data: bytes, where: str) -> tuple[int, int]:
  """(height, width) of an encoded RGB image after verifying its chunks (CRCs, truncation)."""
  try:
    with Image.open(io.BytesIO(data)) as image:
      size, mode = image.size, image.mode
      image.verify()
  except (OSError, ValueError, SyntaxError) as e:
    raise ValueError(f"cityscapes_instances: corrupt image {where} ({e})") from e
  if mode != "RGB":
    raise ValueError(f"cityscapes_instances: {where} is {mode}, expected an RGB image")
  return size[1], size[0]


def convert_annotation(
  label_ids_hxw: np.ndarray, instance_ids_hxw: np.ndarray, where: str = "annotation"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """Turns the labelIds and instanceIds maps of one frame into the shared label maps.

  Args:
    label_ids_hxw: int [H, W] labelIds (0..33).
    instance_ids_hxw: int [H, W] instanceIds: labelId * 1000 + k for objects, labelId below
      1000 elsewhere (a thing labelId there marks a crowd group).
    where: Name of the frame's files, for error messages.

  Returns:
    (semantic_hxw uint8 trainIds, index_map_hxw int32 with instance k at k in 1..K, in ascending
    instanceId order, thing_labels_k int64 0..7, crowd_hxw bool).

  Raises:
    ValueError: for an instanceId whose label has no instances or is unknown.
  """
  semantic = labels.label_id_to_train_id_lut()[label_ids_hxw]
  thing_lut = labels.label_id_to_thing_index_lut()
  values = instance_ids_hxw.astype(np.int64)
  present = np.flatnonzero(np.bincount(values.ravel()))  # the distinct instanceIds, ascending
  label_of_value = np.where(present >= labels.INSTANCE_ID_OFFSET, present // 1000, present)
  known = np.isin(label_of_value, [label.id for label in labels.LABELS if label.id >= 0])
  grouped = (present >= labels.INSTANCE_ID_OFFSET) & ~np.isin(
    label_of_value, [label.id for label in labels.LABELS if label.has_instances]
  )
  if np.any(~known | grouped):
    bad = present[~known | grouped].tolist()
    raise ValueError(f"cityscapes_instances: {where} has invalid instanceIds {bad}")
  thing = thing_lut[label_of_value]
  is_object = (present >= labels.INSTANCE_ID_OFFSET) & (thing >= 0)
  is_crowd = (present < labels.INSTANCE_ID_OFFSET) & (thing >= 0)
  # Lookup tables over the instanceId values map the whole frame in one gather each.
  index_of_value = np.zeros(present[-1] + 1, np.int32)
  index_of_value[present[is_object]] = np.arange(1, int(is_object.sum()) + 1)
  crowd_of_value = np.zeros(present[-1] + 1, bool)
  crowd_of_value[present[is_crowd]] = True
  return semantic, index_of_value[values], thing[is_object].astype(np.int64), crowd_of_value[values]


class CityscapesInstances(tfds.core.GeneratorBasedBuilder):
  """Cityscapes gtFine with trainId semantics, thing instances (boxes, masks) and crowd regions."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}  # noqa: RUF012 (tfds reads a plain dict)
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=__doc__,
      features=features.make_features(image_encoding="png"),
      homepage="https://www.cityscapes-dataset.com/",
      supervised_keys=None,
    )

  def _split_generators(self, dl_manager):
    images, annotations = open_release(dl_manager.manual_dir)
    return {
      split: self._generate_examples(images, annotations, folder)
      for split, folder in SPLIT_FOLDERS.items()
    }

  def _generate_examples(self, images: ReleasePart, annotations: ReleasePart, split_folder: str):
    names = [n for n in images.names(split_folder) if n.endswith("_leftImg8bit.png")]
    if not names:
      raise FileNotFoundError(
        "cityscapes_instances: no *_leftImg8bit.png under "
        f"{images.describe(f'leftImg8bit/{split_folder}/')}\n" + MANUAL_DOWNLOAD_INSTRUCTIONS
      )
    for name in names:
      match = _IMAGE_NAME.match(name)
      if match is None:
        raise ValueError(f"cityscapes_instances: unexpected file {images.describe(name)}")
      yield match["stem"], _make_example(images, annotations, name, match)


def _make_example(images: ReleasePart, annotations: ReleasePart, name: str, match) -> dict:
  base = f"gtFine/{match['split']}/{match['city']}/{match['stem']}_gtFine_"
  label_name, instance_name = base + "labelIds.png", base + "instanceIds.png"
  label_ids = _decode_png(annotations.read(label_name), annotations.describe(label_name))
  instance_ids = _decode_png(annotations.read(instance_name), annotations.describe(instance_name))
  image_bytes = images.read(name)  # stored as it is: the release's PNG, no re-encoding
  image_shape = _image_size(image_bytes, images.describe(name))
  if not label_ids.shape == instance_ids.shape == image_shape:
    raise ValueError(
      f"cityscapes_instances: sizes differ: {images.describe(name)} {image_shape}, "
      f"{label_name} {label_ids.shape}, {instance_name} {instance_ids.shape}"
    )
  semantic, index_map, thing_labels, crowd = convert_annotation(
    label_ids, instance_ids, annotations.describe(instance_name)
  )
  return features.make_example(match["stem"], image_bytes, semantic, index_map, thing_labels, crowd)
