"""The Cityscapes label table and the lookups the builders derive from it.

Cityscapes annotates every pixel with a `labelId` (0..33). Training and evaluation use the 19
`trainId`s; everything else maps to 255 (ignore). Eight of the evaluated classes are "things"
with instance annotations; SegRPN detects those as classes 1..8 (trainId - 10). Caravan and
trailer also carry instances but are not evaluated, so they are neither boxes nor foreground.

The table follows the official definitions of the Cityscapes benchmark (label ids, train ids,
categories, colours); it is written out here so the package does not depend on cityscapesscripts.
"""

import dataclasses

import numpy as np

IGNORE_LABEL = 255  # trainId of everything that is not evaluated
INSTANCE_ID_OFFSET = 1000  # instanceIds PNG: labelId * 1000 + k is one object; < 1000 is a group


@dataclasses.dataclass(frozen=True)
class Label:
  """One row of the Cityscapes label table.

  Attributes:
    name: Class name as used by the official annotations.
    id: labelId stored in `*_gtFine_labelIds.png` (-1: license plate, never in the PNGs).
    train_id: trainId 0..18, or 255 (ignored in training and evaluation).
    category: Coarse category name (flat, construction, object, nature, sky, human, vehicle, void).
    category_id: Index of the category.
    has_instances: Whether `*_gtFine_instanceIds.png` separates the objects of this class.
    ignore_in_eval: Whether the benchmark ignores the class.
    color: RGB colour of the official visualisation.
  """

  name: str
  id: int
  train_id: int
  category: str
  category_id: int
  has_instances: bool
  ignore_in_eval: bool
  color: tuple[int, int, int]


# fmt: off
LABELS: tuple[Label, ...] = (
  #     name                    id  trainId  category       catId  instances ignore  color
  Label("unlabeled",             0, 255, "void",          0, False, True,  (0, 0, 0)),
  Label("ego vehicle",           1, 255, "void",          0, False, True,  (0, 0, 0)),
  Label("rectification border",  2, 255, "void",          0, False, True,  (0, 0, 0)),
  Label("out of roi",            3, 255, "void",          0, False, True,  (0, 0, 0)),
  Label("static",                4, 255, "void",          0, False, True,  (0, 0, 0)),
  Label("dynamic",               5, 255, "void",          0, False, True,  (111, 74, 0)),
  Label("ground",                6, 255, "void",          0, False, True,  (81, 0, 81)),
  Label("road",                  7,   0, "flat",          1, False, False, (128, 64, 128)),
  Label("sidewalk",              8,   1, "flat",          1, False, False, (244, 35, 232)),
  Label("parking",               9, 255, "flat",          1, False, True,  (250, 170, 160)),
  Label("rail track",           10, 255, "flat",          1, False, True,  (230, 150, 140)),
  Label("building",             11,   2, "construction",  2, False, False, (70, 70, 70)),
  Label("wall",                 12,   3, "construction",  2, False, False, (102, 102, 156)),
  Label("fence",                13,   4, "construction",  2, False, False, (190, 153, 153)),
  Label("guard rail",           14, 255, "construction",  2, False, True,  (180, 165, 180)),
  Label("bridge",               15, 255, "construction",  2, False, True,  (150, 100, 100)),
  Label("tunnel",               16, 255, "construction",  2, False, True,  (150, 120, 90)),
  Label("pole",                 17,   5, "object",        3, False, False, (153, 153, 153)),
  Label("polegroup",            18, 255, "object",        3, False, True,  (153, 153, 153)),
  Label("traffic light",        19,   6, "object",        3, False, False, (250, 170, 30)),
  Label("traffic sign",         20,   7, "object",        3, False, False, (220, 220, 0)),
  Label("vegetation",           21,   8, "nature",        4, False, False, (107, 142, 35)),
  Label("terrain",              22,   9, "nature",        4, False, False, (152, 251, 152)),
  Label("sky",                  23,  10, "sky",           5, False, False, (70, 130, 180)),
  Label("person",               24,  11, "human",         6, True,  False, (220, 20, 60)),
  Label("rider",                25,  12, "human",         6, True,  False, (255, 0, 0)),
  Label("car",                  26,  13, "vehicle",       7, True,  False, (0, 0, 142)),
  Label("truck",                27,  14, "vehicle",       7, True,  False, (0, 0, 70)),
  Label("bus",                  28,  15, "vehicle",       7, True,  False, (0, 60, 100)),
  Label("caravan",              29, 255, "vehicle",       7, True,  True,  (0, 0, 90)),
  Label("trailer",              30, 255, "vehicle",       7, True,  True,  (0, 0, 110)),
  Label("train",                31,  16, "vehicle",       7, True,  False, (0, 80, 100)),
  Label("motorcycle",           32,  17, "vehicle",       7, True,  False, (0, 0, 230)),
  Label("bicycle",              33,  18, "vehicle",       7, True,  False, (119, 11, 32)),
  Label("license plate",        -1,  -1, "vehicle",       7, False, True,  (0, 0, 142)),
)
# fmt: on

LABEL_BY_NAME = {label.name: label for label in LABELS}
LABEL_BY_ID = {label.id: label for label in LABELS}

# The 19 evaluated classes, indexed by trainId.
TRAIN_ID_NAMES: tuple[str, ...] = tuple(
  label.name
  for label in sorted(LABELS, key=lambda label: label.train_id)
  if 0 <= label.train_id < IGNORE_LABEL
)
NUM_TRAIN_IDS = len(TRAIN_ID_NAMES)  # 19

# The 8 detection classes: evaluated classes with instances, in trainId order. Detection class
# c (1..8) is THING_NAMES[c - 1] and has trainId c + THING_TRAIN_ID_OFFSET.
THING_NAMES: tuple[str, ...] = tuple(
  label.name
  for label in sorted(LABELS, key=lambda label: label.train_id)
  if label.has_instances and not label.ignore_in_eval
)
NUM_THING_CLASSES = len(THING_NAMES)  # 8
THING_TRAIN_ID_OFFSET = LABEL_BY_NAME["person"].train_id - 1  # 10: trainId = class + 10
# trainIds of the thing classes (11..18): the foreground of mIoU* and of the class-agnostic maps.
THING_TRAIN_IDS: tuple[int, ...] = tuple(
  THING_TRAIN_ID_OFFSET + c for c in range(1, NUM_THING_CLASSES + 1)
)


def label_id_to_train_id_lut() -> np.ndarray:
  """A lookup table from labelId to trainId.

  Returns:
    uint8 [256]: lut[label_id] is the trainId of the label, 255 for ignored and unknown ids.
  """
  lut = np.full(256, IGNORE_LABEL, np.uint8)
  for label in LABELS:
    if label.id >= 0 and 0 <= label.train_id < IGNORE_LABEL:
      lut[label.id] = label.train_id
  return lut


def label_id_to_thing_index_lut() -> np.ndarray:
  """A lookup table from labelId to the 0-based thing index (the tfds ClassLabel value).

  Returns:
    int32 [256]: lut[label_id] is 0..7 for the evaluated thing classes (person .. bicycle) and
    -1 for every other label, caravan and trailer included.
  """
  lut = np.full(256, -1, np.int32)
  for index, name in enumerate(THING_NAMES):
    lut[LABEL_BY_NAME[name].id] = index
  return lut


def label_id_colors() -> np.ndarray:
  """The official colour of every labelId, as the release's *_gtFine_color.png shows them.

  Returns:
    uint8 [256, 3]: colours for labelIds 0..33, black for the rest.
  """
  colors = np.zeros((256, 3), np.uint8)
  for label in LABELS:
    if label.id >= 0:
      colors[label.id] = label.color
  return colors


def train_id_colors() -> np.ndarray:
  """The official colour of every trainId, for visualisation.

  Returns:
    uint8 [256, 3]: colours for trainIds 0..18, black for the rest (255 = ignore included).
  """
  colors = np.zeros((256, 3), np.uint8)
  for label in LABELS:
    if 0 <= label.train_id < IGNORE_LABEL:
      colors[label.train_id] = label.color
  return colors
