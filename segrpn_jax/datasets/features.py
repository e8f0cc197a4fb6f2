"""The feature spec shared by cityscapes_instances and synthetic_streets, and its helpers.

Both builders write the same keys, dtypes and shapes, so the input pipeline reads either:

- `image_id`: text, e.g. "aachen_000000_000019".
- `image`: uint8 [H, W, 3].
- `semantic`: uint8 [H, W, 1], Cityscapes trainIds 0..18, 255 = ignore.
- `instance_map`: uint16 [H, W], 0 = no instance, k = the k-th entry of `instances`.
- `crowd`: bool [H, W], group regions of the evaluated thing classes (e.g. "cargroup").
- `instances`: a sequence of `bbox` (normalised [ymin, xmin, ymax, xmax]), `label` (0..7 over
  person .. bicycle) and `area` (visible pixels).

A box is the pixel extent of the instance's visible mask in continuous coordinates
[min_col, min_row, max_col + 1, max_row + 1], divided by the image width and height.
"""

import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from segrpn_jax.datasets import labels


def make_features(image_encoding: str = "png") -> tfds.features.FeaturesDict:
  """Returns the shared FeaturesDict.

  Args:
    image_encoding: How `image` is stored: "png" (lossless, Cityscapes) or "jpeg". Keys, dtypes
      and shapes are the same either way.

  Returns:
    The tfds.features.FeaturesDict described in the module docstring.
  """
  return tfds.features.FeaturesDict(
    {
      "image_id": tfds.features.Text(),
      "image": tfds.features.Image(
        shape=(None, None, 3), dtype=np.uint8, encoding_format=image_encoding
      ),
      "semantic": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format="png"),
      # zlib: the maps are mostly constant, so they shrink to a few KB per image.
      "instance_map": tfds.features.Tensor(shape=(None, None), dtype=np.uint16, encoding="zlib"),
      "crowd": tfds.features.Tensor(shape=(None, None), dtype=np.bool_, encoding="zlib"),
      "instances": tfds.features.Sequence(
        {
          "bbox": tfds.features.BBoxFeature(),
          "label": tfds.features.ClassLabel(names=labels.THING_NAMES),
          "area": tfds.features.Tensor(shape=(), dtype=np.int32),
        }
      ),
    }
  )


def instance_extents(
  index_map_hxw: np.ndarray, num_instances: int
) -> tuple[np.ndarray, np.ndarray]:
  """Pixel extents and areas of the instances of an index map, vectorised.

  Args:
    index_map_hxw: int [H, W], 0 = no instance, k in 1..num_instances = instance k.
    num_instances: The number of instances K.

  Returns:
    (boxes_kx4, areas_k): float64 [K, 4] continuous pixel extents [x1, y1, x2, y2] =
    [min_col, min_row, max_col + 1, max_row + 1], and int64 [K] pixel counts. An instance
    without pixels gets area 0 and box [0, 0, 0, 0].
  """
  height, width = index_map_hxw.shape
  # rows_present[k, r]: instance k has a pixel in row r; one scatter per axis over the instance
  # pixels only (the background is most of the image).
  flat = np.flatnonzero(index_map_hxw)
  ids = index_map_hxw.ravel()[flat]
  rows_present = np.zeros((num_instances + 1, height), bool)
  rows_present[ids, flat // width] = True
  cols_present = np.zeros((num_instances + 1, width), bool)
  cols_present[ids, flat % width] = True
  rows_present, cols_present = rows_present[1:], cols_present[1:]
  y1 = np.argmax(rows_present, axis=1)
  y2 = height - np.argmax(rows_present[:, ::-1], axis=1)
  x1 = np.argmax(cols_present, axis=1)
  x2 = width - np.argmax(cols_present[:, ::-1], axis=1)
  areas = np.bincount(ids, minlength=num_instances + 1)[1:]
  boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float64)
  boxes[areas == 0] = 0.0
  return boxes, areas.astype(np.int64)


def encode_png(image: np.ndarray, compress_level: int | None = None) -> bytes:
  """Encodes with PIL, which is faster than tfds' TF-graph encoder.

  Args:
    image: uint8 [H, W] or [H, W, C], or uint16 [H, W].
    compress_level: zlib level 0-9; None = PIL's default.

  Returns:
    The PNG bytes, which tfds stores as they are.
  """
  options = {} if compress_level is None else {"compress_level": compress_level}
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG", **options)
  return buffer.getvalue()


def make_example(
  image_id: str,
  image,
  semantic_hxw: np.ndarray,
  index_map_hxw: np.ndarray,
  thing_labels_k: np.ndarray,
  crowd_hxw: np.ndarray,
) -> dict:
  """Assembles one example of the shared features from dense maps.

  Args:
    image_id: The example's id.
    image: uint8 [H, W, 3] array, or the encoded image bytes (stored as they are).
    semantic_hxw: uint8 [H, W] trainIds.
    index_map_hxw: int [H, W], 0 = no instance, k = instance k (1-based, every k present).
    thing_labels_k: int [K] thing index 0..7 of instance k + 1.
    crowd_hxw: bool [H, W] crowd regions.

  Returns:
    A dict matching `make_features()`.

  Raises:
    ValueError: if an instance has no pixel (the map and the label list disagree).
  """
  height, width = index_map_hxw.shape
  num_instances = len(thing_labels_k)
  boxes, areas = instance_extents(index_map_hxw, num_instances)
  if np.any(areas == 0):
    missing = (np.flatnonzero(areas == 0) + 1).tolist()
    raise ValueError(f"{image_id}: instances {missing} have no pixel in the instance map")
  # [x1, y1, x2, y2] pixels -> tfds' normalised [ymin, xmin, ymax, xmax].
  scale = np.array([height, width, height, width], np.float64)
  bbox = (boxes[:, [1, 0, 3, 2]] / scale).astype(np.float32)
  return {
    "image_id": image_id,
    "image": image,
    "semantic": encode_png(semantic_hxw.astype(np.uint8)),
    "instance_map": index_map_hxw.astype(np.uint16),
    "crowd": crowd_hxw.astype(np.bool_),
    "instances": {
      "bbox": bbox.reshape(num_instances, 4),
      "label": np.asarray(thing_labels_k, np.int64).reshape(num_instances),
      "area": areas.astype(np.int32),
    },
  }
