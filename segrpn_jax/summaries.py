"""Pictures of predictions: detections (or ground truth) drawn on the input (Pillow), the
semantic map as an overlay and titled panels side by side, for TensorBoard and
`segrpn_jax.predict`."""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from segrpn_jax.datasets import labels
from segrpn_jax.pretrained import PIXEL_MEAN, PIXEL_STD

TRAIN_ID_COLOURS = labels.train_id_colors()  # [256, 3]: the official palette, index = trainId
BOX_LINE_WIDTH = 2


def denormalize(image_hxwx3: np.ndarray) -> np.ndarray:
  """ImageNet-normalised float image -> uint8 RGB."""
  rgb = (np.asarray(image_hxwx3, np.float32) * PIXEL_STD + PIXEL_MEAN) * 255.0
  return np.clip(rgb, 0, 255).astype(np.uint8)


def draw_detections(
  image_hxwx3: np.ndarray,
  boxes_nx4: np.ndarray,
  scores_n: np.ndarray | None,
  classes_n: np.ndarray,
  valid_n: np.ndarray,
  class_names: tuple[str, ...] = labels.THING_NAMES,
) -> np.ndarray:
  """Draws each valid detection as a box outline with a "name score" label, coloured by class.

  Args:
    image_hxwx3: uint8 RGB image.
    boxes_nx4: [N, 4] boxes (x1, y1, x2, y2) in the image's pixels.
    scores_n: [N] scores in [0, 1], or None for boxes without a score (ground truth): the
      label is the class name alone.
    classes_n: [N] detection classes 1..len(class_names) (class c has trainId c + 10, whose
      colour it gets).
    valid_n: [N] bool; invalid rows (padding) draw nothing.
    class_names: the name of class c is class_names[c - 1].

  Returns:
    A new uint8 [H, W, 3] image; the input is not modified.
  """
  picture = Image.fromarray(np.asarray(image_hxwx3, np.uint8))
  draw = ImageDraw.Draw(picture)
  font = ImageFont.load_default()
  width, height = picture.size
  valid_n = np.asarray(valid_n, bool)
  if scores_n is None:
    scores_n = np.full(len(valid_n), np.nan)
  for box, score, cls in zip(
    np.asarray(boxes_nx4)[valid_n],
    np.asarray(scores_n)[valid_n],
    np.asarray(classes_n)[valid_n],
    strict=True,
  ):
    x1, y1, x2, y2 = np.clip(np.round(box).astype(int), 0, [width - 1, height - 1] * 2)
    colour = tuple(int(v) for v in TRAIN_ID_COLOURS[int(cls) + labels.THING_TRAIN_ID_OFFSET])
    draw.rectangle((x1, y1, x2, y2), outline=colour, width=BOX_LINE_WIDTH)
    text = class_names[int(cls) - 1] + ("" if np.isnan(score) else f" {float(score):.2f}")
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    text_w, text_h = right - left + 2, bottom - top + 2
    # Above the box when it fits, else inside its top edge (boxes touching the image top).
    ty = y1 - text_h if y1 - text_h >= 0 else y1 + BOX_LINE_WIDTH
    tx = min(x1, max(width - text_w, 0))
    draw.rectangle((tx, ty, tx + text_w - 1, ty + text_h - 1), fill=colour)
    # Black text on light class colours, white on dark ones, so every label stays legible.
    luminance = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]
    ink = (0, 0, 0) if luminance > 150 else (255, 255, 255)
    draw.text((tx + 1 - left, ty + 1 - top), text, fill=ink, font=font)
  return np.array(picture)  # writable, unlike np.asarray of a PIL image


def semantic_overlay(image_hxwx3: np.ndarray, labels_hxw: np.ndarray, alpha=0.5) -> np.ndarray:
  """Blends the trainId colours of `labels_hxw` over the image (ignore 255 stays the image)."""
  train_ids = np.asarray(labels_hxw)
  colours = TRAIN_ID_COLOURS[train_ids].astype(np.float32)
  blend = (1 - alpha) * image_hxwx3.astype(np.float32) + alpha * colours
  blend = np.where((train_ids == labels.IGNORE_LABEL)[..., None], image_hxwx3, blend)
  return blend.astype(np.uint8)


TITLE_HEIGHT = 14  # pixels of the strip above each panel of `panels`


def panels(rows: list[list[tuple[str, np.ndarray]]]) -> np.ndarray:
  """Titled pictures side by side: each row's panels left to right, rows top to bottom.

  Args:
    rows: per row, (title, uint8 [H, W, 3] picture) pairs; every picture of the grid has one
      shape. A row may be shorter than the longest; its missing panels stay black.

  Returns:
    uint8 [rows * (TITLE_HEIGHT + H), columns * W, 3]: each panel under a black strip that
    holds its title in white.
  """
  shapes = {np.shape(p) for row in rows for _, p in row}
  if len(shapes) != 1:
    raise ValueError(f"every panel needs one shape, got {sorted(shapes)}")
  height, width, _ = shapes.pop()
  columns = max(len(row) for row in rows)
  canvas = Image.new("RGB", (columns * width, len(rows) * (TITLE_HEIGHT + height)))
  font = ImageFont.load_default()
  for r, row in enumerate(rows):
    top = r * (TITLE_HEIGHT + height)
    for c, (title, picture) in enumerate(row):
      strip = Image.new("RGB", (width, TITLE_HEIGHT))  # a long title is cut at the panel's edge
      draw = ImageDraw.Draw(strip)
      left, upper, _, _ = draw.textbbox((0, 0), title, font=font)
      draw.text((2 - left, 1 - upper), title, fill=(255, 255, 255), font=font)
      canvas.paste(strip, (c * width, top))
      canvas.paste(Image.fromarray(np.asarray(picture, np.uint8)), (c * width, top + TITLE_HEIGHT))
  return np.array(canvas)
