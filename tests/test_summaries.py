"""summaries.draw_detections by invariants of the picture: outline colour, untouched pixels,
padding rows, labels; and semantic_overlay / denormalize on hand-computed pixels."""

import numpy as np
import pytest

from segrpn_jax import summaries
from segrpn_jax.datasets import labels
from segrpn_jax.pretrained import PIXEL_MEAN, PIXEL_STD

GREY = 90  # a background no class colour or label ink equals


def _plain(height=120, width=160):
  return np.full((height, width, 3), GREY, np.uint8)


def _colour(cls):
  return labels.train_id_colors()[cls + labels.THING_TRAIN_ID_OFFSET]


def test_outline_takes_the_class_colour_and_far_pixels_stay():
  image = _plain()
  boxes = np.array([[40.0, 50.0, 100.0, 110.0]])
  out = summaries.draw_detections(image, boxes, np.array([0.87]), np.array([3]), np.array([True]))
  assert out.shape == image.shape and out.dtype == np.uint8
  car = _colour(3)  # class 3 = car, trainId 13
  for y, x in ((80, 40), (80, 41), (80, 100), (80, 99), (110, 70), (109, 70), (50, 70)):
    np.testing.assert_array_equal(out[y, x], car, err_msg=f"outline pixel {(y, x)}")
  np.testing.assert_array_equal(out[80, 70], image[80, 70])  # inside the box
  np.testing.assert_array_equal(out[115:, :], image[115:, :])  # below the box
  np.testing.assert_array_equal(out[:, 105:], image[:, 105:])  # right of box and label
  np.testing.assert_array_equal(image, _plain())  # the input is not drawn on


def test_label_goes_above_the_box_or_inside_at_the_top():
  image = _plain()
  out = summaries.draw_detections(
    image, np.array([[40.0, 50.0, 100.0, 110.0]]), np.array([0.87]), np.array([1]), [True]
  )
  above = out[30:49, 40:100]  # the label "person 0.87" sits on the band above the box
  assert (above != GREY).any(axis=-1).mean() > 0.3
  assert (np.all(above == _colour(1), axis=-1)).any()  # its background is the class colour
  assert (above.min(axis=-1) > 240).any()  # white (antialiased) ink on the dark person red
  top = summaries.draw_detections(
    image, np.array([[40.0, 0.0, 100.0, 60.0]]), np.array([0.5]), np.array([1]), [True]
  )
  inside = top[3:15, 42:90]
  assert (inside != GREY).any(axis=-1).mean() > 0.3  # label inside the box, under its top edge
  np.testing.assert_array_equal(top[61:], image[61:])


def test_invalid_boxes_draw_nothing_and_several_classes_get_their_colours():
  image = _plain()
  boxes = np.array([[10.0, 30.0, 50.0, 70.0], [80.0, 30.0, 150.0, 100.0], [0, 0, 159, 119]])
  out = summaries.draw_detections(
    image, boxes, np.array([0.9, 0.6, 0.99]), np.array([8, 5, 2]), np.array([True, True, False])
  )
  np.testing.assert_array_equal(out[50, 10], _colour(8))  # bicycle's left edge
  np.testing.assert_array_equal(out[60, 150], _colour(5))  # bus's right edge
  np.testing.assert_array_equal(out[0, 0], image[0, 0])  # the invalid full-image box
  np.testing.assert_array_equal(out[119, 159], image[119, 159])
  nothing = summaries.draw_detections(image, boxes, np.ones(3), np.ones(3, int), np.zeros(3, bool))
  np.testing.assert_array_equal(nothing, image)


def test_semantic_overlay_and_denormalize_by_hand():
  image = _plain(2, 2)
  train_ids = np.array([[0, 13], [255, 255]])
  out = summaries.semantic_overlay(image, train_ids, alpha=0.5)
  np.testing.assert_array_equal(out[0, 0], [(90 + 128) // 2, (90 + 64) // 2, (90 + 128) // 2])
  np.testing.assert_array_equal(out[0, 1], [45, 45, (90 + 142) // 2])  # car (0, 0, 142)
  np.testing.assert_array_equal(out[1], image[1])  # ignore stays the image
  rgb = np.array([[[0, 128, 255]]], np.uint8)
  normalised = (rgb / 255.0 - PIXEL_MEAN) / PIXEL_STD
  np.testing.assert_array_equal(summaries.denormalize(normalised), rgb)


def test_ground_truth_boxes_carry_the_class_name_alone():
  image = _plain()
  box, cls = np.array([[40.0, 50.0, 100.0, 110.0]]), np.array([1])
  named = summaries.draw_detections(image, box, None, cls, [True])
  scored = summaries.draw_detections(image, box, np.array([0.87]), cls, [True])
  np.testing.assert_array_equal(named[80, 40], _colour(1))  # the same outline
  band = lambda out: (out[30:49, 40:160] != GREY).any(axis=(0, 2))  # label columns
  assert 0 < band(named).sum() < band(scored).sum()  # "person" is shorter than "person 0.87"


def test_panels_place_titled_pictures_on_a_grid():
  red, blue = np.zeros((10, 30, 3), np.uint8), np.zeros((10, 30, 3), np.uint8)
  red[..., 0], blue[..., 2] = 200, 200
  grid = summaries.panels([[("a", red), ("b", blue)], [("long title, cut at the edge", blue)]])
  t = summaries.TITLE_HEIGHT
  assert grid.shape == (2 * (t + 10), 60, 3)
  np.testing.assert_array_equal(grid[t : t + 10, :30], red)
  np.testing.assert_array_equal(grid[t : t + 10, 30:], blue)
  np.testing.assert_array_equal(grid[2 * t + 10 :, :30], blue)
  np.testing.assert_array_equal(grid[t + 10 :, 30:], 0)  # the second row's missing panel
  title = grid[:t, :30]
  assert title.max() > 200 and title.min() == 0  # white (antialiased) title on black
  assert (title == title[..., :1]).all()  # grey levels only
  long_title = grid[t + 10 : 2 * t + 10]
  assert long_title[:, 25:30].max() > 100  # runs to its panel's edge ...
  np.testing.assert_array_equal(long_title[:, 30:], 0)  # ... and not into the next strip
  with pytest.raises(ValueError, match="one shape"):
    summaries.panels([[("a", red), ("b", np.zeros((5, 5, 3), np.uint8))]])
