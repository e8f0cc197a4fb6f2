"""Cityscapes-like street scenes: the pixels and labels behind synthetic_streets/cityscapes_like.

The variant is specified by Cityscapes' statistics, not by how a detector scores on it:

- Geometry: a pinhole camera with Cityscapes' focal length per image width (fx 2262 px at 2048
  px) and mounting height (1.22 m), the horizon near 42 % of the height (camera.json of the
  release: v0 513 px of 1024, pitch 0.038 rad; approximate), looks down a street: road,
  parking lanes, sidewalks, facades of varying height, and a building closing the street far
  away, all ray-cast per pixel. Objects stand on the ground at a depth drawn uniformly along the
  street, so their sizes follow perspective (smaller towards the horizon) and most are small.
- Counts: instances per image per class follow Cityscapes' fine train split
  (`CITYSCAPES_TRAIN_INSTANCES`, about 17.5 things per image), with a per-image busyness factor
  so that some scenes are empty and some crowded. Cars come in rows parked along both kerbs,
  overlapping each other; pedestrians walk in groups; riders sit on bicycles or motorcycles
  (two instances, the rider in front, as Cityscapes labels them); far-away clusters are crowd
  regions (Cityscapes' "persongroup", "cargroup").
- Appearance: textured facades with windows, asphalt, paving, trees, poles, signs and traffic
  lights; object colours are drawn partly from the scene's own background palette (grey cars
  on grey road, dark clothes against dark facades); faces are shaded; every surface carries
  noise texture. Poles, trees and signs in front of an object occlude it, and so do nearer
  objects. Haze lowers contrast with distance and far pixels are blurred. The ego vehicle's
  bonnet covers the bottom rows (ignore, as in Cityscapes).

Everything is drawn with vectorised NumPy (and SciPy filters); a 256x512 scene takes about 75 ms
of one core.
"""

import numpy as np
from scipy import ndimage

from segrpn_jax.datasets import labels, synthetic_scene

# Camera (Cityscapes camera.json, approximate): focal length per image width, height above road.
FOCAL_PER_WIDTH = 2262.0 / 2048.0
CAMERA_HEIGHT_M = 1.22
HORIZON_RANGE = (0.38, 0.46)  # horizon row / image height
BONNET_RANGE = (0.06, 0.16)  # rows covered by the ego vehicle at the image centre / height

# Instances of the 8 thing classes in Cityscapes' fine train split (2975 images); approximate,
# from the per-class instance statistics of the release (person .. bicycle). Their sum, 52.1k or
# 17.5 per image, agrees with Cordts et al., CVPR 2016, Table 2 (fine train+val, 3475 images:
# 24.4k humans and 41.0k vehicles, 7.0 and 11.8 per image; its vehicles include caravans and
# trailers).
CITYSCAPES_TRAIN_IMAGES = 2975
CITYSCAPES_TRAIN_INSTANCES = (17_919, 1_781, 26_963, 484, 380, 168, 737, 3_675)
PER_IMAGE = np.array(CITYSCAPES_TRAIN_INSTANCES, np.float64) / CITYSCAPES_TRAIN_IMAGES
# Sampled counts are raised by these factors so that the counts that survive occlusion (and the
# bonnet) match PER_IMAGE: calibrated on two sets of 300 scenes of 256x512, checked on the 8000
# validation images (docs/synthetic.md).
SURVIVAL_COMPENSATION = (3.85, 2.0, 1.5, 1.2, 0.95, 0.9, 3.2, 3.8)

MIN_DEPTH_M = 4.5  # nearest object (its foot is then near the bottom row)
MAX_DEPTH_M = 100.0  # farthest object
MIN_VISIBLE_AREA = 1.2e-4  # an instance needs this fraction of the image visible (16 px at 256x512)
MAX_INSTANCES = 90  # per image; the config token pads ground truth to 100
NOISE_SIGMA = 4.0  # per-pixel sensor noise, in 0..255 units
LANE_WIDTH_M = 3.2

_ROAD, _SIDEWALK, _BUILDING, _POLE, _LIGHT, _SIGN, _VEGETATION, _SKY = 0, 1, 2, 5, 6, 7, 8, 10
_PERSON, _RIDER, _CAR, _TRUCK, _BUS, _TRAIN, _MOTORCYCLE, _BICYCLE = range(8)

# Colours that are not the scene's palette: cars' usual paints, skin, sign faces.
CAR_PAINTS = np.array(
  [(25, 25, 28), (55, 57, 60), (95, 97, 100), (150, 152, 155), (200, 200, 198), (225, 225, 222),
   (40, 50, 80), (85, 30, 30), (60, 70, 60), (120, 110, 90)],
  np.float32,
)  # fmt: skip
SKIN_TONES = np.array([(225, 185, 160), (190, 140, 110), (120, 85, 65), (60, 45, 35)], np.float32)
SIGN_FACES = np.array([(30, 80, 170), (200, 40, 40), (235, 235, 230), (230, 190, 30)], np.float32)


class _Scene(synthetic_scene._Canvas):
  """The canvas of synthetic_scene plus a float image, a depth map and the camera."""

  def __init__(self, height, width, rng):
    super().__init__(height, width)
    self.image = np.zeros((height, width, 3), np.float32)
    self.depth = np.full((height, width), np.inf, np.float32)
    self.f = FOCAL_PER_WIDTH * width
    self.horizon = rng.uniform(*HORIZON_RANGE) * height
    self.u0 = rng.uniform(0.44, 0.56) * width
    # Texture: fine value noise (4 px cells) plus per-pixel grain, about unit amplitude.
    cells = rng.standard_normal((height // 4 + 2, width // 4 + 2)).astype(np.float32)
    coarse = ndimage.zoom(cells, 4, order=1)[:height, :width]
    self.texture = 0.7 * coarse + 0.3 * rng.standard_normal((height, width), np.float32)

  def u(self, x, z):
    return self.u0 + self.f * x / z

  def v(self, y, z):
    return self.horizon + self.f * (CAMERA_HEIGHT_M - y) / z

  def grid(self, where):
    """Absolute pixel-centre coordinates (U [1, w'], V [h', 1]) of a window."""
    rows, cols = where
    v = np.arange(rows.start, rows.stop, dtype=np.float32)[:, None] + 0.5
    u = np.arange(cols.start, cols.stop, dtype=np.float32)[None, :] + 0.5
    return u, v

  def window(self, y0, x0, h, w):
    """synthetic_scene's window, also for boxes wholly outside the image (then empty)."""
    r0, r1 = min(max(0, int(np.floor(y0))), self.height), min(self.height, int(np.ceil(y0 + h)))
    c0, c1 = min(max(0, int(np.floor(x0))), self.width), min(self.width, int(np.ceil(x0 + w)))
    r1, c1 = max(r0, r1), max(c0, c1)
    v = (np.arange(r0, r1, dtype=np.float32) + 0.5 - y0)[:, None]
    u = (np.arange(c0, c1, dtype=np.float32) + 0.5 - x0)[None, :]
    return (slice(r0, r1), slice(c0, c1)), u, v

  def box_window(self, left, top, right, bottom):
    return self.window(top, left, bottom - top, right - left)

  def draw(self, where, mask, colors, train_id, depth, index=0, crowd=False):
    """Painter's algorithm: whatever is drawn later is nearer and owns the pixel's labels."""
    mask = np.broadcast_to(mask, self.semantic[where].shape)
    np.copyto(self.image[where], np.asarray(colors, np.float32), where=mask[..., None])
    np.copyto(self.semantic[where], np.uint8(train_id), where=mask)
    np.copyto(self.index[where], np.int32(index), where=mask)
    np.copyto(self.crowd[where], crowd, where=mask)
    np.copyto(self.depth[where], np.asarray(depth, np.float32), where=mask)


# --------------------------------------------------------------------------------------------
# Background: sky, facades, the building closing the street, road and sidewalks (ray-cast).


def _palette(rng):
  """The scene's background colours: facades [4, 3], road, sidewalk, sky top and bottom."""
  tint = rng.uniform([0.92, 0.88, 0.78], [1.08, 1.04, 1.0], (4, 3))
  facades = rng.uniform(55, 190, (4, 1)) * tint
  road = rng.uniform(65, 115) * rng.uniform([0.97, 0.97, 0.97], [1.03, 1.03, 1.08])
  sidewalk = rng.uniform(105, 170) * rng.uniform([0.95, 0.92, 0.85], [1.05, 1.02, 1.0])
  grey = rng.uniform(0.0, 1.0)  # overcast (1) to clear (0)
  blue = np.array([70, 120, 190]) * rng.uniform(0.8, 1.1)
  sky_top = grey * rng.uniform(150, 215) + (1 - grey) * blue
  sky_bottom = np.minimum(sky_top + rng.uniform(20, 60), 245)
  return {
    "facades": facades.astype(np.float32),
    "road": road.astype(np.float32),
    "sidewalk": sidewalk.astype(np.float32),
    "sky_top": sky_top.astype(np.float32),
    "sky_bottom": sky_bottom.astype(np.float32),
  }


def _draw_background(scene, layout, palette, rng):
  height, width = scene.height, scene.width
  u = np.arange(width, dtype=np.float32)[None, :] + 0.5 - scene.u0  # [1, W] from the centre
  v = np.arange(height, dtype=np.float32)[:, None] + 0.5 - scene.horizon  # [H, 1] below horizon
  f, cam = scene.f, CAMERA_HEIGHT_M
  full = (slice(None), slice(None))

  # Sky: a vertical gradient.
  t = np.clip((v + scene.horizon) / max(scene.horizon, 1.0), 0, 1)[..., None]
  sky = palette["sky_top"] * (1 - t) + palette["sky_bottom"] * t
  scene.draw(full, True, np.broadcast_to(sky, (height, width, 3)), _SKY, np.inf)

  # The building that closes the street.
  z_end = layout["street_end"]
  y_end = cam - v * z_end / f
  x_end = u * z_end / f
  hit = (y_end >= 0) & (y_end <= layout["end_height"])
  hit = hit & (x_end >= layout["facade_left"]) & (x_end <= layout["facade_right"])
  windows = (np.mod(y_end, 3.2) > 0.9) & (np.mod(y_end, 3.2) < 2.3) & (np.mod(x_end, 3) > 1)
  base = palette["facades"][rng.integers(0, len(palette["facades"]))]
  colour = np.where(windows[..., None], base * 0.4, base) * (1 + 0.06 * scene.texture[..., None])
  scene.draw(full, hit, colour, _BUILDING, z_end)

  # Facades: planes x = left / right, in segments along z of their own height and colour.
  bounds = np.cumsum(rng.uniform(8, 30, 64))
  bounds = bounds[: np.searchsorted(bounds, z_end) + 1]
  heights = rng.uniform(7, 26, (2, len(bounds)))
  colours = rng.integers(0, len(palette["facades"]), (2, len(bounds)))
  floor_m, bay_m = rng.uniform(2.9, 3.6), rng.uniform(2.2, 4.0)
  sun = rng.uniform(0.7, 1.0, 2)  # one side lit, the other shaded
  for side, x_plane in enumerate((layout["facade_left"], layout["facade_right"])):
    z = np.where(u * x_plane > 0, f * x_plane / u, np.inf) * np.ones_like(v)
    y = cam - v * z / f
    segment = np.minimum(np.searchsorted(bounds, z), len(bounds) - 1)
    hit = (z >= 1.0) & (z <= z_end) & (y >= 0) & (y <= heights[side][segment])
    windows = (np.mod(y, floor_m) > 0.9) & (np.mod(y, floor_m) < 2.3) & (np.mod(z, bay_m) > 0.9)
    shop = (y < 3.2) & (np.mod(z, 7.0) < 4.5) & (y > 0.4)
    base = palette["facades"][colours[side][segment]] * sun[side]
    shade = 1.0 + 0.08 * scene.texture[..., None]
    colour = np.where((windows | shop)[..., None], base * 0.35 + 12.0, base) * shade
    scene.draw(full, hit, colour, _BUILDING, z)

  # Ground: every row below the horizon, nearer than the facades it meets.
  z_ground = np.where(v > 0, f * cam / v, np.inf) * np.ones_like(u)
  x_ground = u * z_ground / f
  ground = (v > 0) & (z_ground < scene.depth)
  road = (x_ground >= layout["road_left"]) & (x_ground <= layout["road_right"])
  lines = np.zeros_like(road)
  for x_line in layout["lane_lines"]:
    lines |= (np.abs(x_ground - x_line) < 0.08) & (np.mod(z_ground, 9.0) < 3.0)
  kerb = ~road & (np.minimum(*(np.abs(x_ground - e) for e in layout["kerbs"])) < 0.15)
  tiles = (np.mod(z_ground, 0.8) < 0.06) | (np.mod(x_ground, 0.8) < 0.06)
  patches = (
    1.0
    + 0.12
    * ndimage.zoom(
      rng.standard_normal((height // 16 + 2, width // 16 + 2)).astype(np.float32), 16, order=1
    )[:height, :width]
  )
  grain = (1.0 + 0.07 * scene.texture) * patches
  colour = (
    np.where(
      road[..., None],
      np.where(lines[..., None], np.float32(215), palette["road"]),
      np.where((tiles | kerb)[..., None], palette["sidewalk"] * 0.82, palette["sidewalk"]),
    )
    * grain[..., None]
  )
  scene.draw(full, ground & road, colour, _ROAD, z_ground)
  scene.draw(full, ground & ~road, colour, _SIDEWALK, z_ground)


def _draw_bonnet(scene, rng):
  """The ego vehicle's bonnet over the bottom rows: ignore, as in Cityscapes."""
  height, width = scene.height, scene.width
  u = (np.arange(width, dtype=np.float32)[None, :] + 0.5) / width - 0.5
  v = np.arange(height, dtype=np.float32)[:, None] + 0.5
  top = height * (1 - rng.uniform(*BONNET_RANGE) * (1 - 1.6 * u**2))
  mask = v >= top
  shade = np.clip(1 - (v - top) / (0.2 * height), 0.3, 1)[..., None]
  colour = rng.uniform(15, 45) + 35 * shade * np.float32([0.9, 0.95, 1.1])
  scene.draw((slice(None), slice(None)), mask, colour, labels.IGNORE_LABEL, 0.0)


# --------------------------------------------------------------------------------------------
# Things: vehicles are 3D boxes (near face and visible side); people and two-wheelers are
# upright boards facing the camera with synthetic_scene's silhouettes.


def _disk(a, b, ca, cb, r):
  return (a - ca) ** 2 + (b - cb) ** 2 <= r * r


def _vehicle_face(cls, a, y, length, height, side):
  """Parts (-1 none, 0 body, 1 dark, 2 light) of a vehicle face in metres.

  Args:
    cls: Thing index (car, truck, bus, train).
    a: Position along the face in metres (side: from the near end; rear: from the left).
    y: Height above the road in metres.
    length: The face's width in metres.
    height: The vehicle's height in metres.
    side: True for the long side, False for the near (rear or front) face.
  """
  parts = np.full(np.broadcast_shapes(a.shape, y.shape), -1, np.int8)

  def paint(mask, part):
    parts[np.broadcast_to(mask, parts.shape)] = part

  inside = (a >= 0) & (a <= length) & (y >= 0) & (y <= height)
  if cls == _CAR:
    waist = 0.58 * height
    body = inside & (y >= 0.25) & (y <= waist)
    paint(body & ~((y > waist - 0.1) & ((a < 0.12) | (a > length - 0.12))), 0)
    rise = y - waist
    if side:  # from the near end (the rear): C-pillar close to it, a raked windscreen
      cabin = (a >= 0.08 * length + 0.6 * rise) & (a <= 0.75 * length - 1.0 * rise)
    else:
      cabin = (a >= 0.1 * length + 0.35 * rise) & (a <= 0.9 * length - 0.35 * rise)
    cabin &= inside & (y > waist)
    paint(cabin, 0)
    paint(cabin & (y > waist + 0.06) & (y < height - 0.07) & (np.abs(a - length / 2) > 0.05), 1)
    if side:
      for centre in (0.75, length - 0.75):
        paint(_disk(a, y, centre, 0.31, 0.31), 1)
    else:
      outer = np.abs(a / length - 0.5)  # 0 at the middle, 0.5 at the edges
      paint(inside & (y < 0.28) & (np.abs(outer - 0.33) < 0.1), 1)  # tyres
      paint(body & (y > 0.6 * waist) & (y < 0.85 * waist) & (outer > 0.35), 2)  # lights
      paint(body & (y > 0.35) & (y < 0.47) & (np.abs(a - length / 2) < 0.25), 2)
  elif cls == _TRUCK:
    cargo_end = 0.72 * length if side else length
    paint(inside & (y >= 0.5) & (y < 1.0), 1)
    cargo = inside & (a <= cargo_end) & (y >= 1.0)
    paint(cargo, 0)
    paint(cargo & ((np.mod(a, 1.2) < 0.07) if side else (np.abs(a - length / 2) < 0.04)), 1)
    if side:
      cab = inside & (a > 0.75 * length) & (y >= 0.6) & (y <= 0.8 * height)
      paint(cab, 0)
      paint(cab & (a > 0.8 * length) & (a < 0.97 * length) & (y > 0.5 * height), 1)
      for centre in (1.1, 2.4, length - 1.2):
        paint(_disk(a, y, centre, 0.5, 0.5), 1)
    else:
      paint(inside & (y < 0.55) & ((a < 0.3 * length) | (a > 0.7 * length)), 1)
      paint(inside & (y > 0.55) & (y < 0.8) & ((a < 0.12 * length) | (a > 0.88 * length)), 2)
  elif cls == _BUS:
    paint(inside & (y >= 0.35), 0)
    if side:
      paint(inside & (y >= 1.35) & (y <= 2.5) & (np.mod(a, 1.4) > 0.15) & (a > 0.5), 1)
      paint(inside & (y >= 0.9) & (y <= 1.05), 2)
      for centre in (2.6, length - 3.2):
        paint(_disk(a, y, centre, 0.5, 0.5), 1)
    else:
      paint(inside & (y > 1.6) & (y < 2.7) & (a > 0.1 * length) & (a < 0.9 * length), 1)
      paint(inside & (y > 0.6) & (y < 0.9) & ((a < 0.15 * length) | (a > 0.85 * length)), 2)
      paint(inside & (y < 0.35) & ((a < 0.3 * length) | (a > 0.7 * length)), 1)
  else:  # train (tram)
    paint(inside & (y >= 0.45), 0)
    paint(inside & (y < 0.45), 1)
    if side:
      paint(inside & (y >= 1.4) & (y <= 2.4) & (np.mod(a, 1.8) > 0.3), 1)
      paint(inside & (y >= 0.45) & (y <= 2.4) & (np.mod(a, 7.0) < 1.3), 1)
    else:
      paint(inside & (y > 1.5) & (y < 2.8) & (a > 0.08 * length) & (a < 0.92 * length), 1)
    paint(inside & (y >= 0.8) & (y <= 0.95), 2)
  return parts


def _draw_vehicle(scene, thing, index, crowd):
  cls, x, z, width, height, length = (thing[k] for k in ("cls", "x", "z", "w", "h", "l"))
  xs = np.array([x - width / 2, x + width / 2])
  corners_u = [scene.u(xx, zz) for xx in xs for zz in (z, z + length)]
  corners_v = [scene.v(yy, zz) for yy in (0.0, height) for zz in (z, z + length)]
  where, _, _ = scene.box_window(min(corners_u), min(corners_v), max(corners_u), max(corners_v))
  u, v = scene.grid(where)
  f, cam = scene.f, CAMERA_HEIGHT_M
  du, dv = u - scene.u0, v - scene.horizon
  near = _vehicle_face(cls, du * z / f - xs[0], cam - dv * z / f, width, height, side=False)
  parts, depth, light = near, np.full(near.shape, z, np.float32), np.ones(near.shape, np.float32)
  side_x = xs[0] if xs[0] > 0 else (xs[1] if xs[1] < 0 else None)
  if side_x is not None:
    z_side = np.where(du * side_x > 0, f * side_x / du, np.inf) * np.ones_like(dv)
    side = _vehicle_face(cls, z_side - z, cam - dv * z_side / f, length, height, side=True)
    use_side = (near < 0) & (side >= 0)
    parts = np.where(use_side, side, near)
    depth = np.where(use_side, z_side, depth)
    light = np.where(use_side, thing["side_light"], light)
  y = cam - dv * depth / f
  _paint_thing(scene, where, parts, thing, index, crowd, depth, light * (0.82 + 0.25 * y / height))


def _draw_board(scene, thing, index, crowd):
  """An upright board facing the camera with one of synthetic_scene's silhouettes."""
  x, z, width, height, bottom = (thing[k] for k in ("x", "z", "w", "h", "bottom"))
  left, right = scene.u(x - width / 2, z), scene.u(x + width / 2, z)
  top, foot = scene.v(bottom + height, z), scene.v(bottom, z)
  where, u, v = scene.window(top, left, foot - top, right - left)
  silhouette = thing["cls"] if thing["cls"] != _RIDER else _PERSON  # riders sit on their bikes
  parts = synthetic_scene._thing_parts(silhouette, u, v, right - left, foot - top)
  shading = 0.8 + 0.3 * (1 - v / max(foot - top, 1e-3))
  _paint_thing(scene, where, parts, thing, index, crowd, np.float32(z), shading)


def _paint_thing(scene, where, parts, thing, index, crowd, depth, shading):
  mask = parts >= 0
  if not mask.any():
    return
  texture = 1.0 + thing["texture"] * scene.texture[where]
  colours = thing["colors"][np.maximum(parts, 0)] * (shading * texture)[..., None]
  train_id = thing["cls"] + labels.THING_TRAIN_ID_OFFSET + 1
  scene.draw(where, mask, colours, train_id, np.broadcast_to(depth, mask.shape), index, crowd)
  if index:
    thing["amodal_area"] = int(mask.sum())


# --------------------------------------------------------------------------------------------
# Stuff in front: poles with signs or traffic lights, trees.


def _draw_pole(scene, item):
  x, z, height = item["x"], item["z"], item["h"]
  left, right = scene.u(x - 0.07, z), scene.u(x + 0.07, z)
  right = max(right, left + 0.8)  # at least most of a pixel wide
  top, foot = scene.v(height, z), scene.v(0.0, z)
  where, _, _ = scene.box_window(left, top, right, foot)
  scene.draw(where, True, item["color"] * (1 + 0.05 * scene.texture[where])[..., None], _POLE, z)
  if item["head"] is None:
    return
  size = 0.35 if item["head"] == "light" else 0.65
  tall = 0.95 if item["head"] == "light" else size
  left, right = scene.u(x - size / 2, z), scene.u(x + size / 2, z)
  top, bottom = scene.v(height + tall * 0.3, z), scene.v(height - tall * 0.7, z)
  where, u, v = scene.box_window(left, top, right, bottom)
  if item["head"] == "light":
    scene.draw(where, True, np.float32([35, 35, 32]), _LIGHT, z)
  else:
    w, h = right - left, bottom - top
    shape = synthetic_scene._disk(u, v, w / 2, h / 2, min(w, h) / 2) if item["round"] else True
    scene.draw(where, shape, item["face"], _SIGN, z)


def _draw_tree(scene, item, rng):
  x, z, trunk_h, radius = item["x"], item["z"], item["trunk"], item["radius"]
  left, right = scene.u(x - 0.17, z), scene.u(x + 0.17, z)
  top = scene.v(trunk_h + 0.5 * radius, z)
  where, _, _ = scene.box_window(left, top, max(right, left + 1), scene.v(0, z))
  bark = np.float32([75, 60, 45]) * (1 + 0.1 * scene.texture[where])[..., None]
  scene.draw(where, True, bark, _VEGETATION, z)
  centre_y = trunk_h + 0.8 * radius
  left, right = scene.u(x - radius, z), scene.u(x + radius, z)
  top, bottom = scene.v(centre_y + radius, z), scene.v(centre_y - radius, z)
  where, u, v = scene.box_window(left, top, right, bottom)
  w, h = right - left, bottom - top
  crown = (u / w * 2 - 1) ** 2 + (v / h * 2 - 1) ** 2 <= 1.0
  leaves = scene.texture[where] + rng.uniform(-0.6, 0.1) < 0.9  # gaps to see through
  green = item["color"] * (1 + 0.25 * scene.texture[where])[..., None]
  scene.draw(where, crown & leaves, green, _VEGETATION, z)


# --------------------------------------------------------------------------------------------
# Layout and sampling.


def _layout(rng):
  road_left, road_right = -rng.uniform(3.0, 8.5), rng.uniform(3.0, 8.5)
  lanes = np.arange(road_left + LANE_WIDTH_M, road_right - 0.5, LANE_WIDTH_M)
  street_end = rng.uniform(70, 220)
  return {
    "road_left": road_left,
    "road_right": road_right,
    "kerbs": (road_left, road_right),
    "lane_lines": lanes[1:-1] if len(lanes) > 2 else lanes[:0],
    "lane_centres": lanes - LANE_WIDTH_M / 2 if len(lanes) else np.array([0.0]),
    "facade_left": road_left - rng.uniform(2.5, 5.5),
    "facade_right": road_right + rng.uniform(2.5, 5.5),
    "street_end": street_end,
    "end_height": rng.uniform(8, 30),
    "far": min(street_end - 3.0, MAX_DEPTH_M),
  }


def _object_color(rng, palette, typical, from_palette=0.45):
  """A colour from the background's palette (camouflage) or from the class's typical ones."""
  if rng.uniform() < from_palette:
    pool = np.concatenate([palette["facades"], palette["road"][None], palette["sidewalk"][None]])
    base = pool[rng.integers(len(pool))] * rng.uniform(0.75, 1.15)
  else:
    base = typical[rng.integers(len(typical))]
  return np.clip(base + rng.normal(0, 8, 3), 5, 250).astype(np.float32)


def _vehicle(rng, palette, cls, x, z, crowd=False):
  dims = {
    _CAR: ((1.7, 1.95), (1.4, 1.65), (3.9, 4.9)),
    _TRUCK: ((2.3, 2.5), (2.8, 3.7), (6.0, 9.0)),
    _BUS: ((2.5, 2.6), (3.0, 3.3), (11.0, 13.0)),
    _TRAIN: ((2.4, 2.65), (3.3, 3.6), (20.0, 35.0)),
  }[cls]
  width, height, length = (rng.uniform(*d) for d in dims)
  if cls == _CAR and rng.uniform() < 0.15:  # vans
    height, length = rng.uniform(1.85, 2.3), rng.uniform(4.5, 5.5)
  body = _object_color(rng, palette, CAR_PAINTS)
  colors = np.stack([body, np.float32([28, 30, 34]), np.clip(body * 1.35 + 30, 0, 255)])
  if cls in (_CAR, _TRUCK):  # a brake light pair on the near face is red, not trim
    colors[2] = np.where(rng.uniform() < 0.5, colors[2], np.float32([170, 35, 30]))
  return {
    "kind": "vehicle",
    "cls": cls,
    "x": x,
    "z": z,
    "w": width,
    "h": height,
    "l": length,
    "colors": colors,
    "side_light": rng.uniform(0.65, 0.9),
    "texture": rng.uniform(0.04, 0.1),
    "crowd": crowd,
  }


def _person(rng, palette, x, z, cls=_PERSON, bottom=0.0, crowd=False):
  height = rng.uniform(1.55, 1.92) if rng.uniform() > 0.1 else rng.uniform(1.0, 1.35)
  if cls == _RIDER:
    height = rng.uniform(1.35, 1.55)
  dark = np.float32([40, 40, 45])
  torso = _object_color(rng, palette, [dark, dark * 2, np.float32([90, 30, 30])], 0.5)
  legs = _object_color(rng, palette, [dark, np.float32([40, 50, 75])], 0.35) * 0.8
  head = SKIN_TONES[rng.integers(len(SKIN_TONES))]
  return {
    "kind": "board",
    "cls": cls,
    "x": x,
    "z": z,
    "w": height * rng.uniform(0.3, 0.42),
    "h": height,
    "bottom": bottom,
    "colors": np.stack([torso, legs, head]),
    "texture": rng.uniform(0.05, 0.12),
    "crowd": crowd,
  }


def _two_wheeler(rng, palette, cls, x, z, crowd=False):
  length = rng.uniform(1.6, 1.8) if cls == _BICYCLE else rng.uniform(1.9, 2.2)
  frame = _object_color(rng, palette, [np.float32([30, 30, 30]), np.float32([150, 30, 30])], 0.5)
  return {
    "kind": "board",
    "cls": cls,
    "x": x,
    "z": z,
    "w": length * rng.uniform(0.5, 1.0),  # foreshortened by the heading
    "h": rng.uniform(1.0, 1.1) if cls == _BICYCLE else rng.uniform(1.1, 1.3),
    "bottom": 0.0,
    "colors": np.stack([frame, np.float32([25, 25, 27]), np.float32([200, 200, 200])]),
    "texture": 0.05,
    "crowd": crowd,
  }


def _count(rng, cls, busyness, dispersion):
  """Instances of a class in one scene: Poisson around Cityscapes' mean, over-dispersed."""
  mean = PER_IMAGE[cls] * SURVIVAL_COMPENSATION[cls] * busyness
  return rng.poisson(mean * rng.gamma(dispersion, 1 / dispersion))


def _sample_things(rng, layout, palette):
  """Every thing of the scene; crowd members carry crowd=True."""
  busyness = rng.gamma(3.0, 1 / 3.0)
  near, far = MIN_DEPTH_M, layout["far"]
  kerbs = (layout["road_left"], layout["road_right"])
  sidewalks = ((layout["facade_left"], kerbs[0]), (kerbs[1], layout["facade_right"]))
  lanes = layout["lane_centres"]
  things = []

  # Cars: rows parked along the kerbs (overlapping in the image), the rest driving in lanes.
  cars = _count(rng, _CAR, busyness, 2.0)
  parked = rng.binomial(cars, rng.uniform(0.55, 0.9))
  rows = [side for side in (0, 1) if rng.uniform() < 0.85]
  for k, side in enumerate(rows):
    n = parked // len(rows) + (k < parked % len(rows))
    z = rng.uniform(near, 15.0)
    for _ in range(n):
      sign = -1 if side == 0 else 1
      car = _vehicle(rng, palette, _CAR, kerbs[side] - sign * rng.uniform(1.0, 1.3), z)
      if z > far:
        break
      things.append(car)
      z += car["l"] + rng.uniform(0.3, 1.5) + (rng.exponential(8.0) if rng.uniform() < 0.3 else 0)
  driving = cars - (parked if rows else 0)
  for cls, n in ((_CAR, driving), *((c, _count(rng, c, 1.0, 1.0)) for c in (_TRUCK, _BUS, _TRAIN))):
    for _ in range(n):
      x = lanes[rng.integers(len(lanes))] + rng.uniform(-0.4, 0.4)
      things.append(_vehicle(rng, palette, cls, x, rng.uniform(near + 2, far)))

  # People walk in groups on the sidewalks, a few cross the road.
  persons = _count(rng, _PERSON, busyness, 0.7)
  while persons > 0:
    size = min(persons, 1 + rng.poisson(1.3))
    persons -= size
    if rng.uniform() < 0.1:
      lo, hi = kerbs
    else:
      lo, hi = sidewalks[rng.integers(2)]
    x, z = rng.uniform(lo + 0.3, hi - 0.3), rng.uniform(near, far)
    for _ in range(size):
      dx, dz = rng.normal(0, 0.45 * np.sqrt(size)), rng.normal(0, 1.0)
      things.append(_person(rng, palette, float(np.clip(x + dx, lo, hi)), max(near, z + dz)))

  # Riders on bicycles (or motorcycles) near the kerbs: two instances, the rider in front.
  for _ in range(_count(rng, _RIDER, busyness, 2.0)):
    cls = _BICYCLE if rng.uniform() < 0.85 else _MOTORCYCLE
    side = rng.integers(2)
    x = kerbs[side] + (1 if side == 0 else -1) * rng.uniform(0.6, 1.6)
    z = rng.uniform(near, far)
    bike = _two_wheeler(rng, palette, cls, x, z)
    rider = _person(rng, palette, x, z - 0.05, cls=_RIDER, bottom=0.45 * bike["h"])
    things += [bike, rider]
  # Parked two-wheelers on the sidewalks, in small clusters; riders brought some already.
  for cls, ridden in ((_BICYCLE, 0.85), (_MOTORCYCLE, 0.15)):
    remaining = PER_IMAGE[cls] - ridden * PER_IMAGE[_RIDER]
    n = rng.poisson(max(remaining, 0) * SURVIVAL_COMPENSATION[cls] * busyness)
    while n > 0:
      size = min(n, 1 + rng.poisson(0.8))
      n -= size
      lo, hi = sidewalks[rng.integers(2)]
      x, z = rng.uniform(lo + 0.5, hi - 0.5), rng.uniform(near, far)
      for k in range(size):
        things.append(_two_wheeler(rng, palette, cls, x + rng.normal(0, 0.2), z + 0.7 * k))

  # Crowd: a far cluster labelled as a group region (persongroup / cargroup).
  if rng.uniform() < 0.3 and far > 35:
    z0, lo_hi = rng.uniform(30, far), sidewalks[rng.integers(2)]
    if rng.uniform() < 0.75:
      for _ in range(rng.integers(6, 15)):
        x = rng.uniform(*lo_hi)
        things.append(_person(rng, palette, x, z0 + rng.uniform(0, 4), crowd=True))
    else:
      x = lo_hi[1] - 1.1 if lo_hi[1] <= 0 else lo_hi[0] + 1.1
      for k in range(rng.integers(4, 9)):
        things.append(_vehicle(rng, palette, _CAR, x, z0 + 5.0 * k, crowd=True))
  return things


def _sample_stuff(rng, layout, palette):
  near, far = MIN_DEPTH_M, layout["far"]
  kerbs = (layout["road_left"], layout["road_right"])
  items = []
  for _ in range(rng.poisson(4.0)):
    side = rng.integers(2)
    head = rng.choice(["sign", "light", None], p=[0.5, 0.2, 0.3])
    items.append(
      {
        "kind": "pole",
        "x": kerbs[side] + (-1 if side == 0 else 1) * rng.uniform(0.3, 0.8),
        "z": rng.uniform(near, far),
        "h": rng.uniform(2.6, 3.2) if head == "sign" else rng.uniform(3.5, 8.0),
        "head": head,
        "round": rng.uniform() < 0.5,
        "face": SIGN_FACES[rng.integers(len(SIGN_FACES))],
        "color": np.float32(rng.uniform(70, 170)) * np.ones(3, np.float32),
      }
    )
  for _ in range(rng.poisson(2.5)):
    side = rng.integers(2)
    items.append(
      {
        "kind": "tree",
        "x": kerbs[side] + (-1 if side == 0 else 1) * rng.uniform(0.8, 2.0),
        "z": rng.uniform(near, far),
        "trunk": rng.uniform(2.0, 3.5),
        "radius": rng.uniform(1.3, 3.0),
        "color": (np.float32([60, 95, 40]) * rng.uniform(0.6, 1.2)).astype(np.float32),
      }
    )
  return items


def _post_process(scene, palette, rng):
  """Haze (lower contrast with distance), distance blur, exposure and sensor noise."""
  depth = np.where(np.isfinite(scene.depth), scene.depth, 0.0)[..., None]
  haze = 0.5 * (palette["sky_bottom"] + 200.0)
  fade = 1.0 - np.exp(-depth / rng.uniform(90, 250))
  image = scene.image * (1 - fade) + haze * fade
  sigma = 0.9 * scene.height / 256
  blurred = ndimage.gaussian_filter(image, (sigma, sigma, 0))
  weight = np.clip((depth - 20.0) / 50.0, 0.0, 0.9)
  image = image * (1 - weight) + blurred * weight
  image = image * rng.uniform(0.75, 1.15) + rng.normal(0, NOISE_SIGMA, image.shape)
  return np.clip(image, 0, 255).astype(np.uint8)


def generate_scene(rng: np.random.Generator, height: int, width: int) -> dict:
  """Draws one Cityscapes-like street scene.

  Args:
    rng: The generator that fixes everything about the scene.
    height: Image height in pixels.
    width: Image width in pixels.

  Returns:
    The dict of `synthetic_scene.generate_scene` (`image`, `semantic`, `index_map`, `labels`,
    `crowd`), plus `amodal_area` int64 [K]: the pixels each instance would cover with nothing
    in front of it (within the image), so that `1 - visible / amodal` is its occluded fraction.
    Every instance keeps at least MIN_VISIBLE_AREA of the image; smaller remnants of occluded
    instances become ignore (255).
  """
  # Rays parallel to a plane meet it at infinity: inf and nan are expected and compare False.
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    return _generate(rng, height, width)


def _generate(rng, height, width):
  scene = _Scene(height, width, rng)
  layout, palette = _layout(rng), _palette(rng)
  _draw_background(scene, layout, palette, rng)
  things = _sample_things(rng, layout, palette)
  things = [t for t in things if not t["crowd"]][:MAX_INSTANCES] + [t for t in things if t["crowd"]]
  stuff = _sample_stuff(rng, layout, palette)

  instance_labels, index = [], {}
  for thing in things:
    if not thing["crowd"]:
      index[id(thing)] = len(instance_labels) + 1
      instance_labels.append(thing["cls"])
      thing["amodal_area"] = 0
  # Painter's algorithm: far to near; a rider (5 cm nearer) is drawn over its bike.
  items = sorted(things + stuff, key=lambda item: -item["z"])
  for item in items:
    if item["kind"] == "vehicle":
      _draw_vehicle(scene, item, index.get(id(item), 0), item["crowd"])
    elif item["kind"] == "board":
      _draw_board(scene, item, index.get(id(item), 0), item["crowd"])
    elif item["kind"] == "pole":
      _draw_pole(scene, item)
    else:
      _draw_tree(scene, item, rng)
  _draw_bonnet(scene, rng)

  # Drop what occlusion left too small, then number the survivors 1..K.
  visible = np.bincount(scene.index.ravel(), minlength=len(instance_labels) + 1)[1:]
  keep = visible >= max(4, MIN_VISIBLE_AREA * height * width)
  new_id = np.zeros(len(instance_labels) + 1, np.int32)
  new_id[1:][keep] = np.arange(1, keep.sum() + 1)
  dropped = (scene.index > 0) & (new_id[scene.index] == 0)
  scene.semantic[dropped] = labels.IGNORE_LABEL
  amodal = np.array([t["amodal_area"] for t in things if not t["crowd"]], np.int64)
  return {
    "image": _post_process(scene, palette, rng),
    "semantic": scene.semantic,
    "index_map": new_id[scene.index],
    "labels": np.array(instance_labels, np.int64)[keep],
    "crowd": scene.crowd,
    "amodal_area": amodal[keep],
  }
