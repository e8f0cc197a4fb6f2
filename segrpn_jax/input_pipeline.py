"""tfds -> tf.data -> NumPy batches with static shapes (the batch contract).

Every batch is a dict of NumPy arrays whose leading axis is the per-process batch
(global batch / jax.process_count()); each process reads its own shard of the split:

  image float32 [B, H, W, 3] (ImageNet mean/std), semantic int32 [B, H, W] (trainIds, 255
  ignore), instance_map int32 [B, H, W], crowd bool [B, H, W], boxes float32 [B, N, 4] (xyxy
  pixels), classes int32 [B, N] (1..8, 0 = pad), valid bool [B, N], example_mask bool
  [B]; eval batches also carry image_id
  (bytes, host only).

N = config.data.max_instances. An image with more instances is an error, never truncated.
"""

import math
from collections.abc import Iterator

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from scipy import ndimage

import segrpn_jax.datasets  # noqa: F401  (registers the builders with tfds)
from segrpn_jax.datasets import cityscapes_instances, labels
from segrpn_jax.pretrained import PIXEL_MEAN, PIXEL_STD

_HOST_ONLY = ("image_id", "num_instances")  # checked and dropped before a train batch is yielded
# The keys evaluation passes into jit (image_id stays on the host).
EVAL_DEVICE_KEYS = ("image", "semantic", "crowd", "example_mask")
_MAPS = ("image", "semantic", "instance_map", "crowd")  # the [H, W, ...] entries of an element
# The maps are decoded in our own map rather than by tfds, so that skipping examples (resuming)
# is cheap.
_LATE_DECODED = _MAPS


def _open_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  try:
    return tfds.builder(config.data.dataset, data_dir=config.data.data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(
      f"config.data.dataset={config.data.dataset!r} is not a tfds dataset; use "
      "'cityscapes_instances' or 'synthetic_streets[/default|/res512x1024|/tiny]'."
    ) from e


def _check_manual_dir(config: ml_collections.ConfigDict, builder) -> None:
  """For an unbuilt Cityscapes, fails unless config.data.manual_dir holds the release."""
  if builder.name != "cityscapes_instances" or builder.is_prepared():
    return
  manual_dir = config.data.manual_dir
  if not manual_dir:
    raise ValueError(
      f"{config.data.dataset} is not prepared in {builder.data_dir} and config.data.manual_dir "
      f"is not set: point config.data.manual_dir at a folder holding "
      f"{cityscapes_instances.IMAGE_ZIP} and {cityscapes_instances.LABEL_ZIP} (or their "
      "extracted folders leftImg8bit/ and gtFine/).\n"
      + cityscapes_instances.MANUAL_DOWNLOAD_INSTRUCTIONS
    )
  try:
    cityscapes_instances.open_release(manual_dir)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"config.data.manual_dir={manual_dir!r}: {e}") from e


def check_dataset(config: ml_collections.ConfigDict) -> None:
  """Fails fast, naming the config key, when the dataset cannot be read or built; builds nothing.

  Args:
    config: The experiment config.

  Raises:
    ValueError / FileNotFoundError: for an unknown dataset, or a Cityscapes release that is
    neither built nor in config.data.manual_dir.
  """
  _check_manual_dir(config, _open_builder(config))


def get_builder(config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The tfds builder of `config.data.dataset`, prepared first if it has not been yet.

  Every process prepares a missing dataset itself; tfds writes to a temporary folder and
  renames it, so processes sharing a data_dir do not corrupt each other.

  Args:
    config: The experiment config (`data.dataset`, `data.data_dir`, `data.manual_dir`).

  Returns:
    A prepared tfds DatasetBuilder.

  Raises:
    ValueError: for an unknown dataset, or for Cityscapes that is not built yet while
      `config.data.manual_dir` is unset (FileNotFoundError: set but without the release).
  """
  builder = _open_builder(config)
  if builder.is_prepared():
    return builder
  _check_manual_dir(config, builder)
  download_config = tfds.download.DownloadConfig(manual_dir=config.data.manual_dir)
  builder.download_and_prepare(download_config=download_config)
  return builder


def per_process_batch_size(global_batch_size: int, key: str, process_count: int) -> int:
  """Splits a global batch over processes after checking it divides over the devices.

  Args:
    global_batch_size: The batch over all devices and processes.
    key: Its config key, for the error message.
    process_count: Number of processes (hosts).

  Returns:
    The batch each process yields.

  Raises:
    ValueError: if the batch does not divide by jax.device_count().
  """
  devices = jax.device_count()
  if global_batch_size <= 0 or global_batch_size % devices or global_batch_size % process_count:
    raise ValueError(
      f"{key}={global_batch_size} must be a positive multiple of the {devices} devices "
      f"(jax.device_count()) and of the {process_count} processes; set {key} to a multiple of "
      f"{devices}."
    )
  return global_batch_size // process_count


def crowd_regions(crowd_hxw: np.ndarray, semantic_hxw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """One image's crowd groups as COCO ignore regions: each 8-connected component of one thing
  class's crowd pixels is its own region (host-side, NumPy; evaluation calls it per image).

  Two groups of a class far apart are two regions, so a detection between them is scored;
  one box around both would swallow it.

  Args:
    crowd_hxw: bool [H, W], the batch's `crowd`.
    semantic_hxw: int [H, W] trainIds, the batch's `semantic`; a crowd pixel's class is its
      thing trainId (crowd pixels of other trainIds are no region).

  Returns:
    (boxes [K, 4] float32 xyxy pixel extents, x2/y2 one past the last pixel; classes [K] int32
    in 1..8), class by class, components in scipy.ndimage.label's (raster) order.
  """
  crowd_hxw, semantic_hxw = np.asarray(crowd_hxw, bool), np.asarray(semantic_hxw)
  if crowd_hxw.ndim != 2 or crowd_hxw.shape != semantic_hxw.shape:
    raise ValueError(
      f"crowd_regions: crowd {crowd_hxw.shape} and semantic {semantic_hxw.shape} must be the "
      "same [H, W] maps of one image"
    )
  boxes, classes = [], []
  eight_connected = np.ones((3, 3), bool)
  for c, train_id in enumerate(labels.THING_TRAIN_IDS, start=1):
    components, _ = ndimage.label(crowd_hxw & (semantic_hxw == train_id), eight_connected)
    for rows, cols in ndimage.find_objects(components):
      boxes.append((cols.start, rows.start, cols.stop, rows.stop))
      classes.append(c)
  return np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int32)


def _resize(image_hxwxc: tf.Tensor, image_size, method: str) -> tf.Tensor:
  """tf.image.resize, skipped when the image already has the size (stored at that size)."""
  same = tf.reduce_all(tf.shape(image_hxwxc)[:2] == tf.constant(image_size))
  dtype = tf.float32 if method == "bilinear" else image_hxwxc.dtype
  return tf.cond(
    same,
    lambda: tf.cast(image_hxwxc, dtype),
    lambda: tf.cast(tf.image.resize(image_hxwxc, image_size, method=method), dtype),
  )


def preprocess(
  example: dict, image_size: tuple[int, int], max_instances: int, flip: tf.Tensor
) -> dict:
  """Decoded tfds example -> one element of the batch contract (plus image_id, num_instances).

  Args:
    example: A decoded example of the shared features.
    image_size: (height, width) to resize to.
    max_instances: N, the padded number of boxes.
    flip: Scalar bool tensor: mirror image, maps and boxes horizontally.

  Returns:
    A dict of tensors with static shapes; boxes beyond N are cut here and reported through
    `num_instances` so the host can fail on them.
  """
  height, width = image_size
  image = _resize(tf.cast(example["image"], tf.float32), image_size, "bilinear")

  def nearest(map_hxw, dtype):
    return _resize(tf.cast(map_hxw, dtype)[..., None], image_size, "nearest")[..., 0]

  semantic = nearest(example["semantic"][..., 0], tf.int32)
  instance_map = nearest(example["instance_map"], tf.int32)
  crowd = nearest(example["crowd"], tf.uint8) > 0
  # tfds boxes are normalised [ymin, xmin, ymax, xmax]; the contract is xyxy pixels.
  ymin, xmin, ymax, xmax = tf.unstack(example["instances"]["bbox"], num=4, axis=1)
  boxes = tf.stack([xmin * width, ymin * height, xmax * width, ymax * height], axis=1)
  classes = tf.cast(example["instances"]["label"], tf.int32) + 1

  def mirror():
    x1, y1, x2, y2 = tf.unstack(boxes, num=4, axis=1)
    flipped_boxes = tf.stack([width - x2, y1, width - x1, y2], axis=1)
    # tf.reverse: a negative-stride slice of a large image is several times slower.
    maps = [tf.reverse(m, axis=[1]) for m in (image, semantic, instance_map, crowd)]
    return (*maps, flipped_boxes)

  image, semantic, instance_map, crowd, boxes = tf.cond(
    flip, mirror, lambda: (image, semantic, instance_map, crowd, boxes)
  )
  image = (image / 255.0 - PIXEL_MEAN) / PIXEL_STD

  num_instances = tf.shape(classes)[0]
  pad = tf.maximum(max_instances - num_instances, 0)
  boxes = tf.pad(boxes[:max_instances], [[0, pad], [0, 0]])
  classes = tf.pad(classes[:max_instances], [[0, pad]])
  return {
    "image": tf.ensure_shape(tf.cast(image, tf.float32), (height, width, 3)),
    "semantic": tf.ensure_shape(semantic, (height, width)),
    "instance_map": tf.ensure_shape(instance_map, (height, width)),
    "crowd": tf.ensure_shape(crowd, (height, width)),
    "boxes": tf.ensure_shape(boxes, (max_instances, 4)),
    "classes": tf.ensure_shape(classes, (max_instances,)),
    "valid": tf.range(max_instances) < num_instances,
    "example_mask": tf.constant(True),
    "image_id": example["image_id"],
    "num_instances": num_instances,
  }


def random_crop(element: dict, crop_size: tuple[int, int], seed: tf.Tensor) -> dict:
  """A uniformly placed crop_size window of one preprocessed element (training only).

  The maps are cut to the window; indices still match the instance map and every shape stays
  static. Per instance:
  - all of its pixels inside the window: its box, shifted to the window (as without a crop);
  - some inside, some outside (cut by the window): the extent of its pixels inside, the way the
    datasets define a box at the stored resolution;
  - none in the map (resizing dropped a tiny instance): its box, shifted and clipped to the
    window, valid if anything of it is left;
  - none inside but some outside: invalid, class 0, zero box.
  A window of the whole image therefore leaves the element as it is.

  Args:
    element: an output of `preprocess`.
    crop_size: (height, width) of the window, at most the element's image size.
    seed: a stateless seed [2] that fixes the window's position.

  Returns:
    The element at crop_size, with `boxes`, `classes` (0 where invalid) and `valid` of the
    window.
  """
  crop_h, crop_w = crop_size
  height, width = element["image"].shape[:2]
  room = tf.constant([height - crop_h + 1, width - crop_w + 1], tf.float32)
  y0, x0 = tf.unstack(tf.cast(tf.random.stateless_uniform([2], seed) * room, tf.int32))
  y0, x0 = tf.minimum(y0, height - crop_h), tf.minimum(x0, width - crop_w)
  cut = {key: element[key][y0 : y0 + crop_h, x0 : x0 + crop_w] for key in _MAPS}

  n = element["boxes"].shape[0]

  def segment_ids(instance_map):
    # Segment k (1..n) gathers instance k's pixels; ids beyond n (an image over max_instances,
    # which the host rejects) and 0 go to segments that are not read.
    return tf.reshape(tf.clip_by_value(instance_map, 0, n + 1), [-1])

  def pixel_counts(ids):
    return tf.math.unsorted_segment_sum(tf.ones_like(ids), ids, n + 2)[1 : n + 1]

  ids = segment_ids(cut["instance_map"])
  inside = pixel_counts(ids)
  total = pixel_counts(segment_ids(element["instance_map"]))
  rows, cols = tf.meshgrid(tf.range(crop_h), tf.range(crop_w), indexing="ij")
  rows, cols = tf.reshape(rows, [-1]), tf.reshape(cols, [-1])
  extent = tf.cast(
    tf.stack(
      [
        tf.math.unsorted_segment_min(cols, ids, n + 2)[1 : n + 1],
        tf.math.unsorted_segment_min(rows, ids, n + 2)[1 : n + 1],
        tf.math.unsorted_segment_max(cols, ids, n + 2)[1 : n + 1] + 1,
        tf.math.unsorted_segment_max(rows, ids, n + 2)[1 : n + 1] + 1,
      ],
      axis=1,
    ),
    tf.float32,
  )
  offset = tf.cast(tf.stack([x0, y0, x0, y0]), tf.float32)
  limit = tf.constant([crop_w, crop_h, crop_w, crop_h], tf.float32)
  shifted = tf.clip_by_value(element["boxes"] - offset, 0.0, limit)
  shifted_area = (shifted[:, 2] - shifted[:, 0]) * (shifted[:, 3] - shifted[:, 1])
  whole = tf.logical_and(total > 0, tf.equal(inside, total))
  dropped = tf.logical_and(tf.equal(total, 0), shifted_area > 0)
  keeps_box = tf.logical_or(whole, dropped)  # else the extent of its pixels in the window
  valid = tf.logical_and(element["valid"], tf.logical_or(dropped, inside > 0))
  boxes = tf.where(keeps_box[:, None], shifted, extent)
  boxes = tf.where(valid[:, None], boxes, 0.0)
  classes = tf.where(valid, element["classes"], 0)
  return {**element, **cut, "boxes": boxes, "classes": classes, "valid": valid}


def check_instance_counts(batch: dict, max_instances: int) -> None:
  """Fails on an image with more instances than the padded size (they would be lost).

  Args:
    batch: A NumPy batch carrying `num_instances` and `image_id`.
    max_instances: config.data.max_instances.

  Raises:
    ValueError: naming the first offending image, its count and the config key to raise.
  """
  over = np.flatnonzero(batch["num_instances"] > max_instances)
  if over.size:
    i = over[0]
    image_id = batch["image_id"][i].decode()
    raise ValueError(
      f"image {image_id} has {batch['num_instances'][i]} instances, more than "
      f"config.data.max_instances={max_instances}; raise config.data.max_instances to at least "
      f"{batch['num_instances'].max()}."
    )


def _read(builder, split, process_index, process_count, config, shuffle):
  """This process's shard of a split, with the large features still encoded."""
  shard = tfds.even_splits(split, n=process_count)[process_index]
  read_config = tfds.ReadConfig(shuffle_seed=config.seed, try_autocache=False)
  decoders = {key: tfds.decode.SkipDecoding() for key in _LATE_DECODED}
  ds = builder.as_dataset(
    split=shard, shuffle_files=shuffle, read_config=read_config, decoders=decoders
  )
  return ds, builder.info.splits[shard].num_examples


def _decode(example: dict, features: tfds.features.FeaturesDict) -> dict:
  return {**example, **{key: features[key].decode_example(example[key]) for key in _LATE_DECODED}}


def _deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def create_train_iterator(
  config: ml_collections.ConfigDict,
  start_step: int = 0,
  *,
  builder: tfds.core.DatasetBuilder | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> Iterator[dict]:
  """An infinite iterator of training batches (shuffled, randomly flipped, deterministic).

  Args:
    config: The experiment config.
    start_step: Batches already consumed (a resumed run): the iterator continues with batch
      `start_step` of the stream a fresh run would see. Skipping reads records but decodes none.
    builder: A prepared builder; default `get_builder(config)`.
    process_index: This process's shard; default jax.process_index().
    process_count: Number of shards; default jax.process_count().

  Returns:
    An iterator of NumPy batch dicts of config.train.batch_size / process_count examples.
  """
  builder = builder or get_builder(config)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  batch_size = per_process_batch_size(
    config.train.batch_size, "config.train.batch_size", process_count
  )
  data = config.data
  ds, _ = _read(builder, data.train_split, process_index, process_count, config, shuffle=True)
  ds = ds.shuffle(data.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True).repeat()
  ds = ds.enumerate().skip(start_step * batch_size)

  def prepare(position, example):
    # The flip of the k-th example a process reads depends only on (seed, process, k).
    seed = tf.stack([tf.constant(config.seed, tf.int64), position * process_count + process_index])
    flip = tf.logical_and(data.random_flip, tf.random.stateless_uniform([], seed) < 0.5)
    example = _decode(example, builder.info.features)
    element = preprocess(example, tuple(data.image_size), data.max_instances, flip)
    if data.train_crop_size:
      # The window is drawn from its own stream of the same (seed, process, k).
      crop_seed = tf.random.experimental.stateless_fold_in(seed, 1)
      element = random_crop(element, tuple(data.train_crop_size), crop_seed)
    return element

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  ds = _deterministic(ds.batch(batch_size, drop_remainder=True).prefetch(data.prefetch))
  return _checked_batches(ds, data.max_instances)


def _checked_batches(ds: tf.data.Dataset, max_instances: int) -> Iterator[dict]:
  for batch in ds.as_numpy_iterator():
    check_instance_counts(batch, max_instances)
    yield {k: v for k, v in batch.items() if k not in _HOST_ONLY}


class EvalDataset:
  """The evaluation split as re-iterable NumPy batches; every example exactly once.

  Each process reads its shard; all processes yield `num_batches` batches (the same number, so
  collective eval steps line up), padding the end with examples whose `example_mask` is False
  (zero image, semantic 255, no boxes, empty image_id).

  Attributes:
    num_examples: Examples in this process's shard.
    num_batches: Batches per pass.
    batch_size: Examples per (per-process) batch.
  """

  def __init__(
    self, dataset: tf.data.Dataset, num_examples, num_batches, batch_size, max_instances
  ):
    self._dataset = dataset
    self._max_instances = max_instances
    self.num_examples = num_examples
    self.num_batches = num_batches
    self.batch_size = batch_size

  def __len__(self) -> int:
    return self.num_batches

  def __iter__(self) -> Iterator[dict]:
    for batch in self._dataset.as_numpy_iterator():
      check_instance_counts(batch, self._max_instances)
      del batch["num_instances"]
      yield batch


def _padding_example(element_spec: dict) -> dict:
  padding = {k: tf.zeros(s.shape, s.dtype) for k, s in element_spec.items()}
  padding["semantic"] = tf.fill(element_spec["semantic"].shape, labels.IGNORE_LABEL)
  padding["example_mask"] = tf.constant(False)
  return padding


def create_eval_dataset(
  config: ml_collections.ConfigDict,
  *,
  builder: tfds.core.DatasetBuilder | None = None,
  process_index: int | None = None,
  process_count: int | None = None,
) -> EvalDataset:
  """The evaluation split (config.data.eval_split), unshuffled, unflipped, padded at the end.

  Args:
    config: The experiment config.
    builder: A prepared builder; default `get_builder(config)`.
    process_index: This process's shard; default jax.process_index().
    process_count: Number of shards; default jax.process_count().

  Returns:
    An EvalDataset of batches of config.eval.batch_size / process_count examples.
  """
  builder = builder or get_builder(config)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  batch_size = per_process_batch_size(
    config.eval.batch_size, "config.eval.batch_size", process_count
  )
  data = config.data
  ds, num_examples = _read(builder, data.eval_split, process_index, process_count, config, False)
  largest_shard = max(
    builder.info.splits[shard].num_examples
    for shard in tfds.even_splits(data.eval_split, n=process_count)
  )
  num_batches = math.ceil(largest_shard / batch_size)
  no_flip = tf.constant(False)
  ds = ds.map(
    lambda example: preprocess(
      _decode(example, builder.info.features), tuple(data.image_size), data.max_instances, no_flip
    ),
    num_parallel_calls=tf.data.AUTOTUNE,
  )
  padding = tf.data.Dataset.from_tensors(_padding_example(ds.element_spec))
  ds = ds.concatenate(padding.repeat(num_batches * batch_size - num_examples))
  ds = _deterministic(ds.batch(batch_size, drop_remainder=True).prefetch(data.prefetch))
  return EvalDataset(ds, num_examples, num_batches, batch_size, data.max_instances)


def create_datasets(config: ml_collections.ConfigDict) -> tuple[Iterator[dict], EvalDataset]:
  """The training iterator and the evaluation dataset of an experiment.

  Args:
    config: The experiment config (`data`, `train.batch_size`, `eval.batch_size`, `seed`).

  Returns:
    (train_iterator, eval_dataset): an infinite iterator of training batches and a
    re-iterable EvalDataset, both yielding NumPy dicts of the batch contract.
  """
  builder = get_builder(config)
  train_iterator = create_train_iterator(config, builder=builder)
  return train_iterator, create_eval_dataset(config, builder=builder)
