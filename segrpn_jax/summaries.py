"""Images for TensorBoard: detections drawn on the input and the semantic map as an overlay."""

import numpy as np

from segrpn_jax.datasets import labels
from segrpn_jax.pretrained import PIXEL_MEAN, PIXEL_STD

TRAIN_ID_COLOURS = labels.train_id_colors()  # [256, 3]: the official palette, index = trainId


def denormalize(image_hxwx3: np.ndarray) -> np.ndarray:
  """ImageNet-normalised float image -> uint8 RGB."""
  rgb = (np.asarray(image_hxwx3, np.float32) * PIXEL_STD + PIXEL_MEAN) * 255.0
  return np.clip(rgb, 0, 255).astype(np.uint8)


def draw_boxes(
  image_hxwx3: np.ndarray, boxes_nx4: np.ndarray, classes_n: np.ndarray, valid_n: np.ndarray
) -> np.ndarray:
  """Draws 2-pixel box outlines coloured by detection class (1..8 = trainId 11..18)."""
  out = image_hxwx3.copy()
  height, width = out.shape[:2]
  for box, cls in zip(boxes_nx4[valid_n], classes_n[valid_n], strict=True):
    x1, y1, x2, y2 = np.clip(np.round(box).astype(int), 0, [width - 1, height - 1] * 2)
    colour = TRAIN_ID_COLOURS[int(cls) + labels.THING_TRAIN_ID_OFFSET]
    out[y1 : y1 + 2, x1 : x2 + 1] = colour
    out[max(y2 - 1, 0) : y2 + 1, x1 : x2 + 1] = colour
    out[y1 : y2 + 1, x1 : x1 + 2] = colour
    out[y1 : y2 + 1, max(x2 - 1, 0) : x2 + 1] = colour
  return out


def semantic_overlay(image_hxwx3: np.ndarray, labels_hxw: np.ndarray, alpha=0.5) -> np.ndarray:
  """Blends the trainId colours of `labels_hxw` over the image (ignore 255 stays the image)."""
  train_ids = np.asarray(labels_hxw)
  colours = TRAIN_ID_COLOURS[train_ids].astype(np.float32)
  blend = (1 - alpha) * image_hxwx3.astype(np.float32) + alpha * colours
  blend = np.where((train_ids == labels.IGNORE_LABEL)[..., None], image_hxwx3, blend)
  return blend.astype(np.uint8)
