"""Images for TensorBoard: detections drawn on the input and the semantic map as an overlay."""

import numpy as np

# Cityscapes trainId colours (the official palette), index = trainId.
TRAIN_ID_COLOURS = np.array(
  [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153),
    (153, 153, 153), (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152),
    (70, 130, 180), (220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70),
    (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
  ],
  np.uint8,
)  # fmt: skip
IMAGENET_MEAN = np.array((0.485, 0.456, 0.406), np.float32)
IMAGENET_STD = np.array((0.229, 0.224, 0.225), np.float32)


def denormalize(image_hxwx3: np.ndarray) -> np.ndarray:
  """ImageNet-normalised float image -> uint8 RGB."""
  rgb = (np.asarray(image_hxwx3, np.float32) * IMAGENET_STD + IMAGENET_MEAN) * 255.0
  return np.clip(rgb, 0, 255).astype(np.uint8)


def draw_boxes(
  image_hxwx3: np.ndarray, boxes_nx4: np.ndarray, classes_n: np.ndarray, valid_n: np.ndarray
) -> np.ndarray:
  """Draws 2-pixel box outlines coloured by detection class (1..8 = trainId 11..18)."""
  out = image_hxwx3.copy()
  height, width = out.shape[:2]
  for box, cls in zip(boxes_nx4[valid_n], classes_n[valid_n], strict=True):
    x1, y1, x2, y2 = np.clip(np.round(box).astype(int), 0, [width - 1, height - 1] * 2)
    colour = TRAIN_ID_COLOURS[min(int(cls) + 10, 18)]
    out[y1 : y1 + 2, x1 : x2 + 1] = colour
    out[max(y2 - 1, 0) : y2 + 1, x1 : x2 + 1] = colour
    out[y1 : y2 + 1, x1 : x1 + 2] = colour
    out[y1 : y2 + 1, max(x2 - 1, 0) : x2 + 1] = colour
  return out


def semantic_overlay(image_hxwx3: np.ndarray, labels_hxw: np.ndarray, alpha=0.5) -> np.ndarray:
  """Blends the trainId colours of `labels_hxw` over the image (ignore 255 stays the image)."""
  labels = np.asarray(labels_hxw)
  colours = TRAIN_ID_COLOURS[np.clip(labels, 0, 18)].astype(np.float32)
  blend = (1 - alpha) * image_hxwx3.astype(np.float32) + alpha * colours
  blend = np.where((labels == 255)[..., None], image_hxwx3, blend)
  return blend.astype(np.uint8)
