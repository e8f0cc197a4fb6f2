"""Procedural street scenes: the pixels and labels behind the synthetic_streets dataset.

A scene is sky, buildings, trees, a road in perspective with sidewalks, poles and signs (stuff),
then crowd groups and 3..13 objects of the 8 Cityscapes thing classes. Each thing class has its
own base hue and silhouette (a person is a red head-torso-legs figure, a car a blue body with a
cabin and two wheels, a train a long purple body with a window band, ...), so a small detector
can tell them apart; object colours are jittered and the whole image carries Gaussian noise.

Object sides sqrt(w * h) are log-uniform from 3% to 50% of the image height, and one object in
eight is large, log-uniform from 50% of the height up to what fits the image (about 1.2 heights
for buses and trains). Since the scale thresholds (docs/architecture.md) grow with the input size,
the fractions hold at any resolution: every FPN level of every scale case gets objects.

Objects are placed largest first, and a new object is kept only if at least half of it stays
visible behind the larger ones placed before; drawing then goes from small (far) to large
(near), so larger objects occlude smaller ones and every instance keeps at least half its pixels.

Everything is drawn with vectorised NumPy on the object's own bounding box; a 256x512 scene
takes a few milliseconds.
"""

import functools
import itertools

import numpy as np

from segrpn_jax.datasets import labels

# Base RGB of each thing class (index = thing label 0..7), far from the stuff colours and
# from each other in hue.
THING_COLORS = np.array(
  [
    (215, 35, 45),  # person: red
    (250, 145, 10),  # rider: orange
    (35, 65, 215),  # car: blue
    (120, 75, 35),  # truck: brown
    (25, 165, 105),  # bus: green-teal
    (135, 55, 215),  # train: purple
    (235, 45, 190),  # motorcycle: magenta
    (20, 215, 235),  # bicycle: cyan
  ],
  np.float32,
)
# Width / height range of each class's box.
ASPECT_RANGES = (
  (0.33, 0.45),  # person
  (0.6, 0.8),  # rider
  (1.6, 2.2),  # car
  (1.3, 1.8),  # truck
  (2.2, 3.0),  # bus
  (3.2, 4.5),  # train
  (1.3, 1.7),  # motorcycle
  (1.5, 1.9),  # bicycle
)
CROWD_CLASSES = (0, 1, 2, 7)  # person, rider, car and bicycle come in groups
SKIN = np.array((235, 195, 165), np.float32)
GLASS = np.array((50, 60, 80), np.float32)
TYRE = np.array((30, 30, 32), np.float32)
WHITE = np.array((235, 235, 235), np.float32)

MIN_SIDE_FRACTION = 0.03  # smallest object side / image height
SMALL_SIDE_FRACTION = 0.5  # most objects are below this side / image height ...
LARGE_PROBABILITY = 0.125  # ... and this fraction is above it,
MAX_SIDE_FRACTION = 1.2  # up to this (case2's top level starts at 448 / 512 = 0.875)
MIN_VISIBLE_FRACTION = 0.5  # an object is kept only if this much of it stays visible
MIN_VISIBLE_PIXELS = 8
NOISE_SIGMA = 7.0  # per-pixel Gaussian noise, in 0..255 units

_ROAD, _SIDEWALK, _BUILDING, _POLE, _SIGN, _VEGETATION, _SKY = 0, 1, 2, 5, 7, 8, 10


def _disk(u, v, cu, cv, r):
  return (u - cu) ** 2 + (v - cv) ** 2 <= r * r


def _segment(u, v, a, b, half_width):
  """Pixels within half_width of the segment a-b (points in pixel units)."""
  (au, av), (bu, bv) = a, b
  du, dv = bu - au, bv - av
  t = np.clip(((u - au) * du + (v - av) * dv) / max(du * du + dv * dv, 1e-6), 0.0, 1.0)
  return (u - au - t * du) ** 2 + (v - av - t * dv) ** 2 <= half_width * half_width


def _thing_parts(thing, u, v, w, h):
  """Silhouette of a thing in its box.

  Args:
    thing: Thing index 0..7.
    u: float [1, w'] pixel x offsets from the box's left edge (pixel centres).
    v: float [h', 1] pixel y offsets from the box's top edge.
    w: Box width in pixels.
    h: Box height in pixels.

  Returns:
    int8 [h', w']: -1 outside the object, else the part: 0 body colour, 1 dark (tyres, glass),
    2 light (skin, stripes).
  """
  x, y = u / w, v / h  # normalised, for rectangles
  parts = np.full(np.broadcast_shapes(u.shape, v.shape), -1, np.int8)
  thin = max(0.8, 0.06 * h)  # bars stay at least ~1.5 px wide on tiny objects

  def paint(mask, part):
    parts[np.broadcast_to(mask, parts.shape)] = part

  if thing == 0:  # person: legs, torso, head
    legs = (y >= 0.5) & (((x >= 0.2) & (x <= 0.45)) | ((x >= 0.55) & (x <= 0.8)))
    paint(legs, 1)
    paint(((x - 0.5) / 0.48) ** 2 + ((y - 0.37) / 0.19) ** 2 <= 1.0, 0)
    paint(_disk(u, v, 0.5 * w, 0.1 * h, 0.1 * h), 2)
  elif thing == 1:  # rider: wheels, frame, leaning torso, head
    for cx in (0.2, 0.8):
      ring = _disk(u, v, cx * w, 0.8 * h, 0.19 * h) & ~_disk(u, v, cx * w, 0.8 * h, 0.19 * h - thin)
      paint(ring, 1)
    paint(_segment(u, v, (0.2 * w, 0.8 * h), (0.8 * w, 0.8 * h), thin), 1)
    paint(((x - 0.45) / 0.22) ** 2 + ((y - 0.36) / 0.2) ** 2 <= 1.0, 0)
    paint(_segment(u, v, (0.45 * w, 0.5 * h), (0.6 * w, 0.75 * h), 1.5 * thin), 0)
    paint(_disk(u, v, 0.45 * w, 0.1 * h, 0.1 * h), 2)
  elif thing == 2:  # car: body, narrowing cabin with glass, two wheels
    paint((y >= 0.4) & (y <= 0.85), 0)
    t = np.clip((0.4 - y) / 0.32, 0.0, 1.0)
    cabin = (y >= 0.08) & (y < 0.4) & (x >= 0.18 + 0.12 * t) & (x <= 0.82 - 0.12 * t)
    paint(cabin, 0)
    paint(cabin & (y >= 0.15) & (y <= 0.36) & (np.abs(x - 0.5) >= 0.02), 1)
    for cx in (0.22, 0.78):
      paint(_disk(u, v, cx * w, 0.84 * h, 0.16 * h), 1)
  elif thing == 3:  # truck: tall cargo box with panel lines, lower cabin, three wheels
    cargo = (x <= 0.68) & (y <= 0.86)
    paint(cargo, 0)
    paint(cargo & (np.mod(y * 6.0, 1.0) < 0.12), 1)
    paint((x >= 0.7) & (y >= 0.3) & (y <= 0.86), 0)
    paint((x >= 0.75) & (x <= 0.95) & (y >= 0.36) & (y <= 0.55), 1)
    for cx in (0.15, 0.52, 0.86):
      paint(_disk(u, v, cx * w, 0.88 * h, 0.12 * h), 1)
  elif thing == 4:  # bus: long body, a row of windows, two wheels
    paint((y <= 0.9) & ((x - 0.5) ** 2 / 0.25 + (y - 0.45) ** 2 / 0.22 <= 1.6), 0)
    windows = (y >= 0.15) & (y <= 0.45) & (np.mod(x * 8.0, 1.0) > 0.12) & (x > 0.04) & (x < 0.96)
    paint(windows, 1)
    for cx in (0.15, 0.85):
      paint(_disk(u, v, cx * w, 0.9 * h, 0.1 * h), 1)
  elif thing == 5:  # train: long body with a slanted nose, window band, light stripe
    body = (y >= 0.05) & (x >= 0.12 * (1.0 - y) ** 2)
    paint(body, 0)
    paint(body & (y >= 0.2) & (y <= 0.45) & (np.mod(x * 14.0, 1.0) > 0.2), 1)
    paint(body & (y >= 0.6) & (y <= 0.68), 2)
  elif thing == 6:  # motorcycle: two solid wheels, body, handlebar
    for cx in (0.2, 0.8):
      paint(_disk(u, v, cx * w, 0.72 * h, 0.28 * h), 1)
    paint(((x - 0.5) / 0.32) ** 2 + ((y - 0.45) / 0.2) ** 2 <= 1.0, 0)
    paint(_segment(u, v, (0.72 * w, 0.1 * h), (0.78 * w, 0.5 * h), 1.5 * thin), 0)
  else:  # bicycle: two rings and a triangular frame, all in the class colour
    for cx in (0.22, 0.78):
      outer = _disk(u, v, cx * w, 0.7 * h, 0.3 * h)
      paint(outer & ~_disk(u, v, cx * w, 0.7 * h, 0.3 * h - 1.2 * thin), 0)
    top = (0.5 * w, 0.35 * h)
    for a, b in (((0.22, 0.7), top), ((0.78, 0.7), top), ((0.22, 0.7), (0.55, 0.7))):
      paint(_segment(u, v, (a[0] * w, a[1] * h), b, thin), 0)
    paint(_segment(u, v, (0.72 * w, 0.15 * h), (0.78 * w, 0.7 * h), thin), 0)
  return parts


def _part_colors(thing, rng):
  """[3, 3] colours of (body, dark, light) parts for one object, jittered."""
  body = THING_COLORS[thing] * rng.uniform(0.8, 1.15) + rng.uniform(-12, 12, 3)
  light = SKIN if thing in (0, 1) else WHITE
  return np.stack([body, TYRE, light]).astype(np.float32)


class _Canvas:
  """The dense maps of a scene under construction."""

  def __init__(self, height, width):
    self.height, self.width = height, width
    self.image = np.zeros((height, width, 3), np.uint8)
    self.semantic = np.full((height, width), labels.IGNORE_LABEL, np.uint8)
    self.index = np.zeros((height, width), np.int32)
    self.crowd = np.zeros((height, width), bool)

  def window(self, y0, x0, h, w):
    """Clipped pixel ranges of a box and the pixel-centre offsets (u [1, w'], v [h', 1])."""
    r0, r1 = max(0, int(np.floor(y0))), min(self.height, int(np.ceil(y0 + h)))
    c0, c1 = max(0, int(np.floor(x0))), min(self.width, int(np.ceil(x0 + w)))
    v = (np.arange(r0, r1, dtype=np.float32) + 0.5 - y0)[:, None]
    u = (np.arange(c0, c1, dtype=np.float32) + 0.5 - x0)[None, :]
    return (slice(r0, r1), slice(c0, c1)), u, v

  def paint(self, where, mask, colors, train_id, index=0, crowd=False):
    """Writes colours and labels where `mask` ([h', w'], broadcastable, or True) is set.

    Stuff is drawn first, on an empty index and crowd map, so only crowd groups and instances
    write those two maps.
    """
    colors = np.clip(colors, 0, 255).astype(np.uint8)
    labels_too = bool(index) or crowd
    if mask is True:  # the whole window: plain slice assignment is the fast path
      self.image[where] = colors
      self.semantic[where] = train_id
      if labels_too:
        self.index[where] = index
        self.crowd[where] = crowd
      return
    mask = np.broadcast_to(mask, self.semantic[where].shape)
    # copyto(where=...) avoids materialising the indices of a boolean assignment.
    np.copyto(self.image[where], colors, where=mask[..., None])
    np.copyto(self.semantic[where], np.uint8(train_id), where=mask)
    if labels_too:
      np.copyto(self.index[where], np.int32(index), where=mask)
      np.copyto(self.crowd[where], crowd, where=mask)


def _draw_stuff(canvas, rng):
  """Sky, buildings, trees, road, sidewalk, poles and signs; returns the horizon row."""
  height, width = canvas.height, canvas.width
  rows = np.arange(height, dtype=np.float32)[:, None]
  cols = np.arange(width, dtype=np.float32)[None, :]
  horizon = rng.uniform(0.38, 0.5) * height
  full = (slice(None), slice(None))

  # Sky: a vertical gradient, one colour per row (buildings and ground cover the rest).
  top, bottom = rng.uniform(100, 140, 3), rng.uniform(170, 200, 3) + np.array([0, 10, 30])
  t = np.clip(rows / horizon, 0, 1)
  sky_rows = np.minimum(top * (1 - t) + bottom * t + np.array([0, 40, 90]), 255).astype(np.float32)
  canvas.paint(full, True, sky_rows[:, None, :], _SKY)

  # Buildings: a row of facades with a window grid each.
  edges = np.sort(rng.uniform(0, width, rng.integers(2, 7)))
  edges = np.concatenate([[0.0], edges, [width]])
  for left, right in itertools.pairwise(edges):
    roof = rng.uniform(0.02, 0.6) * horizon
    where, u, v = canvas.window(roof, left, horizon + 2 - roof, right - left)
    facade = np.float32(rng.uniform(85, 165)) * np.float32(rng.uniform([0.9, 0.9, 0.85], 1.1))
    period = rng.uniform(0.04, 0.08) * height
    windows = (np.mod(u, period) < 0.5 * period) & (np.mod(v, period * 1.3) < 0.6 * period)
    canvas.paint(where, True, facade, _BUILDING)
    canvas.paint(where, windows, facade * 0.55, _BUILDING)

  # Ground: a road in perspective from a vanishing point, sidewalks beside it; one block.
  first_row = int(np.ceil(horizon))
  below = (slice(first_row, height), slice(None))
  depth = rows[first_row:] - horizon
  vanish = rng.uniform(0.3, 0.7) * width
  half = depth / (height - horizon) * rng.uniform(0.45, 0.75) * width
  road = np.abs(cols - vanish) <= half
  dash = np.mod(np.sqrt(depth), 2.0) < 1.0
  lane = road & (np.abs(cols - vanish) <= 0.015 * half + 0.5) & dash
  sidewalk_color = np.float32(rng.uniform(150, 180)) * np.float32([1.0, 0.9, 0.95])
  road_color = np.float32(rng.uniform(70, 95)) * np.float32([1.0, 0.97, 1.08])
  palette = np.stack([sidewalk_color, road_color, WHITE])  # indexed by road + lane
  canvas.paint(below, True, palette[road.astype(np.int8) + lane], _SIDEWALK)
  canvas.semantic[below] = np.where(road, np.uint8(_ROAD), np.uint8(_SIDEWALK))

  for _ in range(rng.integers(1, 4)):  # trees: trunk and a textured canopy
    cx, r = rng.uniform(0, width), rng.uniform(0.06, 0.16) * height
    foot = horizon + rng.uniform(0.0, 0.1) * height
    trunk_w = max(1.5, 0.15 * r)
    where, u, v = canvas.window(foot - 1.8 * r, cx - trunk_w / 2, 1.8 * r, trunk_w)
    canvas.paint(where, True, np.float32([90, 70, 45]), _VEGETATION)
    where, u, v = canvas.window(foot - 3.6 * r, cx - r, 2 * r, 2 * r)
    canopy = _disk(u, v, r, r, r)
    texture = 1.0 + 0.18 * np.sin(u * 1.3 + rng.uniform(0, 6)) * np.sin(v * 1.1)
    color = np.float32([55, 125, 40]) * rng.uniform(0.8, 1.2) * texture[..., None]
    canvas.paint(where, canopy, color, _VEGETATION)

  for _ in range(rng.integers(0, 4)):  # poles, most with a sign
    x = rng.uniform(0, width)
    foot = rng.uniform(horizon + 0.05 * height, height)
    length = rng.uniform(0.3, 0.6) * height * (foot - horizon) / (height - horizon) + 4
    pole_w = max(1.0, 0.006 * width * (foot - horizon) / (height - horizon) * 2)
    where, u, v = canvas.window(foot - length, x, length, pole_w)
    canvas.paint(where, True, np.float32([140] * 3), _POLE)
    if rng.uniform() < 0.7:
      side = max(3.0, 6 * pole_w)
      where, u, v = canvas.window(foot - length - 0.5 * side, x + pole_w / 2 - side / 2, side, side)
      shape = np.ones((v.shape[0], u.shape[1]), bool)
      if rng.uniform() < 0.5:
        shape = _disk(u, v, side / 2, side / 2, side / 2)
      canvas.paint(where, shape, np.float32([225, 215, 20]), _SIGN)
  return horizon


@functools.cache
def _noise_pool(height, width):
  """[2H, 2W, 3] Gaussian noise; a scene takes a window at a random offset (cheaper than fresh
  noise per scene, and as deterministic)."""
  pool_rng = np.random.default_rng(20240527)
  noise = pool_rng.standard_normal((2 * height, 2 * width, 3), dtype=np.float32) * NOISE_SIGMA
  return np.round(noise).astype(np.int16)


def _sample_box(thing, side, horizon, height, width, rng):
  aspect = rng.uniform(*ASPECT_RANGES[thing])
  w, h = side * np.sqrt(aspect), side / np.sqrt(aspect)
  x0 = rng.uniform(-0.3 * w, width - 0.7 * w)
  # Perspective: the apparent height grows with the distance of the foot below the horizon.
  bottom = horizon + h * rng.uniform(0.5, 1.3)
  bottom = np.clip(bottom, horizon + 0.03 * height, height + 0.1 * h)
  return bottom - h, x0, h, w


def _max_side(thing, height, width):
  """Largest side that keeps the box within 95% of the image in both directions."""
  max_aspect, min_aspect = ASPECT_RANGES[thing][1], ASPECT_RANGES[thing][0]
  return min(
    MAX_SIDE_FRACTION * height,
    0.95 * height * np.sqrt(min_aspect),
    0.95 * width / np.sqrt(max_aspect),
  )


def generate_scene(rng: np.random.Generator, height: int, width: int) -> dict:
  """Draws one street scene.

  Args:
    rng: The generator that fixes everything about the scene.
    height: Image height in pixels.
    width: Image width in pixels.

  Returns:
    A dict with `image` uint8 [H, W, 3], `semantic` uint8 [H, W] (trainIds), `index_map` int32
    [H, W] (0 = none, k = instance k), `labels` int64 [K] (thing index 0..7 of instance k + 1)
    and `crowd` bool [H, W]; every instance has at least MIN_VISIBLE_PIXELS visible pixels.
  """
  canvas = _Canvas(height, width)
  horizon = _draw_stuff(canvas, rng)
  min_side = max(5.0, MIN_SIDE_FRACTION * height)

  # Place objects largest first; keep one only if enough of it shows in front of the others.
  things = rng.integers(0, labels.NUM_THING_CLASSES, rng.integers(3, 14))
  large = rng.uniform(size=len(things)) < LARGE_PROBABILITY
  low = np.where(large, SMALL_SIDE_FRACTION * height, min_side)
  high = [_max_side(t, height, width) for t in things]
  high = np.where(large, high, np.minimum(high, SMALL_SIDE_FRACTION * height))
  sides = np.exp(rng.uniform(np.log(low), np.log(np.maximum(high, low))))
  occupied = np.zeros((height, width), bool)
  placed = []
  for i in np.argsort(sides)[::-1]:
    thing = int(things[i])
    for _ in range(8):
      y0, x0, h, w = _sample_box(thing, sides[i], horizon, height, width, rng)
      where, u, v = canvas.window(y0, x0, h, w)
      parts = _thing_parts(thing, u, v, w, h)
      mask = parts >= 0
      drawn = int(mask.sum())
      visible = int((mask & ~occupied[where]).sum())
      if drawn and visible >= max(MIN_VISIBLE_PIXELS, MIN_VISIBLE_FRACTION * drawn):
        occupied[where] |= mask
        placed.append((thing, where, parts))
        break

  # Crowd groups sit behind the objects: a cluster of small members of one class.
  for _ in range(rng.binomial(2, 0.2)):
    thing = int(rng.choice(CROWD_CLASSES))
    side = rng.uniform(0.05, 0.12) * height
    y0, x0, h, w = _sample_box(thing, side, horizon, height, width, rng)
    for k in range(rng.integers(3, 7)):
      where, u, v = canvas.window(y0 + rng.uniform(-0.2, 0.2) * h, x0 + 0.45 * k * w, h, w)
      parts = _thing_parts(thing, u, v, w, h)
      canvas.paint(
        where,
        parts >= 0,
        _part_colors(thing, rng)[np.maximum(parts, 0)],
        thing + labels.THING_TRAIN_ID_OFFSET + 1,
        crowd=True,
      )

  # Draw from far (small) to near (large): each object covers the smaller ones behind it.
  for index, (thing, where, parts) in enumerate(placed[::-1], start=1):
    colors = _part_colors(thing, rng)[np.maximum(parts, 0)]
    canvas.paint(where, parts >= 0, colors, thing + labels.THING_TRAIN_ID_OFFSET + 1, index)

  noise_y, noise_x = rng.integers(0, height), rng.integers(0, width)
  noise = _noise_pool(height, width)[noise_y : noise_y + height, noise_x : noise_x + width]
  image = np.clip(canvas.image + noise, 0, 255).astype(np.uint8)
  return {
    "image": image,
    "semantic": canvas.semantic,
    "index_map": canvas.index,
    "labels": np.array([thing for thing, _, _ in placed[::-1]], np.int64),
    "crowd": canvas.crowd,
  }
