"""Prediction on image files with a trained run.

  python -m segrpn_jax.predict --workdir=RUN --input=PATH --output=DIR [--step=N] [--fusion=F]
    [--batch_size=B] [--score_threshold=S]

PATH is a folder (its image files, sorted), a glob or one file. Every image is read with Pillow
as 8-bit RGB, resized to the run's config.data.image_size and normalised as the input pipeline
does, run through `api.predict` and mapped back to its own pixels. DIR receives:

  detections.json             a COCO file: `images` (id, file_name, height, width), `categories`
                              (ids 1..8: person ... bicycle) and `annotations`, every detection
                              of the model (id, image_id, category_id, bbox [x, y, w, h], area,
                              score, iscrowd 0); `faster_coco_eval.COCO(path)` or pycocotools
                              read it, and its `annotations` are what `COCO.loadRes` takes
  semantic/<stem>_labelIds.png  Cityscapes labelIds (uint8) at the image's own size
  foreground/<stem>.png       the class-agnostic foreground probability, round(p * 255)
  vis/<stem>.png              the detections scoring at least --score_threshold (default 0.5)
                              on the image, beside the semantic overlay

The JSON keeps every detection the model returns (down to config.model.roi.score_threshold);
--score_threshold only thins the pictures. Bad arguments (a --workdir without a run, an --output
that is a file, an --input without images) are reported before the model is loaded, as one
message without a traceback. An image that cannot be read is reported, skipped and listed at the
end; the command then exits with status 1 after writing every other image.
"""

import functools
import glob
import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags, logging
from PIL import Image
from tqdm import tqdm

from segrpn_jax import api, checkpointing, errors, summaries
from segrpn_jax.datasets import labels
from segrpn_jax.models.rpn import FUSIONS
from segrpn_jax.ops.resize import resize_bilinear
from segrpn_jax.pretrained import PIXEL_MEAN, PIXEL_STD

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")

# Pillow modes of 16-bit (and 32-bit integer) single-channel images: PNG/TIFF 16-bit grayscale
# opens as one of these. They are scaled to 8 bits by the 16-bit range (>> 8), not by the image's
# maximum, so a dark 16-bit image stays dark as it would in any viewer.
_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

DEFAULT_SCORE_THRESHOLD = 0.5  # of the drawn detections; our choice, a common one for pictures


def train_id_to_label_id_lut() -> np.ndarray:
  """The inverse of labels.label_id_to_train_id_lut for the 19 evaluated classes.

  Returns:
    uint8 [256]: lut[train_id] is the Cityscapes labelId of trainId 0..18 (road -> 7, ...,
    bicycle -> 33); every other index (255 = ignore) maps to 0 ('unlabeled').
  """
  lut = np.zeros(256, np.uint8)
  for label in labels.LABELS:
    if 0 <= label.train_id < labels.IGNORE_LABEL:
      lut[label.train_id] = label.id
  return lut


def list_images(input_path: str) -> tuple[list[str], str]:
  """The image files `input_path` names, sorted, and the folder their file_names are relative to.

  Args:
    input_path: a folder (its files with an image extension, not recursive), a glob pattern
      (`**` recurses) or one file.

  Returns:
    (paths, root): root is the folder, the glob matches' common folder or the file's folder.
  """
  if os.path.isdir(input_path):
    root = input_path
    paths = [
      os.path.join(input_path, name)
      for name in os.listdir(input_path)
      if name.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(input_path, name))
    ]
  elif os.path.isfile(input_path):
    return [input_path], os.path.dirname(input_path)
  else:
    paths = [p for p in glob.glob(input_path, recursive=True) if os.path.isfile(p)]
    root = os.path.commonpath([os.path.dirname(p) for p in paths]) if paths else ""
  if not paths:
    raise errors.InputFileError(
      f"--input {input_path!r} names no image files: give a folder of images "
      f"({', '.join(IMAGE_EXTENSIONS)}), a glob such as 'photos/*.jpg' or one file."
    )
  return sorted(paths), root


def relative_names(paths: list[str], root: str | None) -> list[str]:
  """Each file's name relative to `root` (its basename when root is None), checked for clashes.

  Args:
    paths: the image files.
    root: the input folder.

  Returns:
    The names for images.json; the outputs are named by these without their extension, so two
    names differing only in the extension (a.png, a.jpg) are an error naming both.
  """
  names = [os.path.relpath(p, root) if root is not None else os.path.basename(p) for p in paths]
  seen: dict[str, str] = {}
  for path, name in zip(paths, names, strict=True):
    stem = os.path.splitext(name)[0]
    if stem in seen:
      raise errors.InputFileError(
        f"{seen[stem]!r} and {path!r} would write the same output files ({stem}.png): "
        "rename one or predict them separately."
      )
    seen[stem] = path
  return names


def load_image(path: str) -> np.ndarray:
  """Reads an image file as 8-bit RGB.

  Grayscale, palette, CMYK and the like are converted by Pillow; an alpha channel is dropped
  (the colour values are kept, not composited on a background); 16-bit grayscale is scaled to
  8 bits by the 16-bit range (value >> 8), not by the image's maximum. The EXIF orientation is
  not applied: outputs are in the stored pixel grid.

  Args:
    path: the image file.

  Returns:
    uint8 [H, W, 3].
  """
  with Image.open(path) as image:
    image.load()
    if image.mode in _WIDE_MODES:
      wide = np.asarray(image).astype(np.int64)
      gray = (np.clip(wide, 0, 65535) >> 8).astype(np.uint8)
      return np.repeat(gray[..., None], 3, axis=-1)
    if image.mode == "F":
      raise ValueError(f"{path}: floating-point images (Pillow mode 'F') have no fixed range.")
    return np.asarray(image.convert("RGB"), np.uint8)


def preprocess(rgb_hxwx3: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
  """Resizes and normalises an image as the input pipeline does.

  Bilinear with half-pixel centres and no antialiasing, which is what the pipeline's
  tf.image.resize does, so a frame predicted here sees the pixels it would see in evaluation.

  Args:
    rgb_hxwx3: uint8 RGB image of any size.
    image_size: (height, width) of the model's input, config.data.image_size.

  Returns:
    float32 [height, width, 3]: (RGB / 255 - PIXEL_MEAN) / PIXEL_STD.
  """
  return np.asarray(_preprocess(jnp.asarray(rgb_hxwx3), tuple(image_size)))


@functools.partial(jax.jit, static_argnames=("image_size",))
def _preprocess(rgb_hxwx3: jax.Array, image_size: tuple[int, int]) -> jax.Array:
  image = rgb_hxwx3.astype(jnp.float32)
  if image.shape[:2] != image_size:
    image = jax.image.resize(image, (*image_size, 3), "bilinear", antialias=False)
  return (image / 255.0 - jnp.asarray(PIXEL_MEAN)) / jnp.asarray(PIXEL_STD)


@functools.partial(jax.jit, static_argnames=("height", "width"))
def _maps_to_own_size(semantic_logits, foreground, height: int, width: int):
  """Semantic trainIds and foreground probability of one image at its own size (or None each).

  The semantic logits are resized bilinearly and then arg-maxed, the way the model makes its
  own semantic_labels at the network size: one resampling of smooth logits, rather than a
  nearest resize of already arg-maxed labels, which would add blocky class boundaries.
  """
  train_ids = fg = None
  if semantic_logits is not None:
    logits = resize_bilinear(semantic_logits[None], height, width)[0]
    train_ids = jnp.argmax(logits, axis=-1).astype(jnp.uint8)
  if foreground is not None:
    fg = resize_bilinear(foreground[None, ..., None], height, width)[0, ..., 0]
  return train_ids, fg


def scale_boxes(boxes_nx4: np.ndarray, own_hw: tuple[int, int], net_hw: tuple[int, int]):
  """Boxes (x1, y1, x2, y2) in network-input pixels -> the image's own pixels, clipped to it.

  Args:
    boxes_nx4: boxes in the resized image of size net_hw.
    own_hw: (height, width) of the original image.
    net_hw: (height, width) of the network input, config.data.image_size.

  Returns:
    float32 [N, 4] boxes scaled by (w_own / W, h_own / H) and clipped to [0, w_own] x [0, h_own].
  """
  (h, w), (net_h, net_w) = own_hw, net_hw
  scaled = np.asarray(boxes_nx4, np.float32) * np.float32([w / net_w, h / net_h] * 2)
  return np.clip(scaled, 0.0, np.float32([w, h] * 2))


def coco_categories() -> list[dict]:
  """The COCO `categories` of the detection classes: ids 1..8 with their Cityscapes names and
  coarse categories (person -> human, car -> vehicle, ...)."""
  return [
    {"id": i + 1, "name": name, "supercategory": labels.LABEL_BY_NAME[name].category}
    for i, name in enumerate(labels.THING_NAMES)
  ]


def _foreground(out: dict):
  for key in api.FOREGROUND_KEYS:
    if key in out:
      return out[key]
  return None


def _write_png(array: np.ndarray, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def predict_images(
  config: ml_collections.ConfigDict,
  model,
  variables: dict,
  paths: list[str],
  output_dir: str,
  fusion: str | None = None,
  batch_size: int = 1,
  root: str | None = None,
  progress: bool = True,
  score_threshold: float = DEFAULT_SCORE_THRESHOLD,
) -> dict:
  """Predicts every image file in `paths` and writes the results under `output_dir`.

  Each batch has exactly `batch_size` images (the last one padded with zero images, whose
  outputs are dropped), so api.predict compiles once. While the device runs a batch, the host
  reads the next one and writes the previous one's files.

  Args:
    config: the run's config (data.image_size, model.semantic_head).
    model: the SegRPN module from api.load.
    variables: its variables.
    paths: image files, in the order that gives their ids 1..N.
    output_dir: where detections.json and semantic/, foreground/, vis/ go.
    fusion: the inference fusion (see api.predict); None = the config's.
    batch_size: images per forward pass.
    root: file_names in detections.json and output stems are relative to it; None = basenames.
    progress: show a tqdm progress bar.
    score_threshold: the pictures in vis/ draw the detections scoring at least this; the JSON
      keeps all of them.

  Returns:
    {'images': number written, 'detections': number of detections, 'failed': [(path, error)]
    for every file that could not be read, 'output_dir': output_dir}. An unreadable file keeps
    its id (its position in `paths`) unused, so ids do not shift when a file is fixed.
  """
  if batch_size < 1:
    raise ValueError(f"--batch_size must be at least 1, got {batch_size}.")
  net_hw = tuple(int(v) for v in config.data.image_size)
  names = relative_names(paths, root)
  os.makedirs(output_dir, exist_ok=True)
  lut = train_id_to_label_id_lut()
  images, detections, failed = [], [], []
  bar = tqdm(total=len(paths), unit="img", disable=not progress, desc="predict")

  def write(out: dict, batch: list[tuple[int, np.ndarray]]) -> None:
    out = jax.device_get(out)
    det = out["detections"]
    foreground = _foreground(out)
    for i, (index, rgb) in enumerate(batch):
      name, own_hw, image_id = names[index], rgb.shape[:2], index + 1
      stem = os.path.splitext(name)[0]
      images.append({"id": image_id, "file_name": name, "height": own_hw[0], "width": own_hw[1]})
      valid = np.asarray(det["valid"][i], bool)
      boxes = scale_boxes(det["boxes"][i], own_hw, net_hw)
      for box, score, cls in zip(
        boxes[valid], det["scores"][i][valid], det["classes"][i][valid], strict=True
      ):
        x1, y1, x2, y2 = (float(v) for v in box)
        detections.append(
          {
            "image_id": image_id,
            "category_id": int(cls),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": (x2 - x1) * (y2 - y1),
            "score": float(score),
            "iscrowd": 0,
          }
        )
      train_ids, fg = jax.device_get(
        _maps_to_own_size(
          out["semantic_logits"][i] if "semantic_logits" in out else None,
          foreground[i] if foreground is not None else None,
          *own_hw,
        )
      )
      drawn = valid & (np.asarray(det["scores"][i]) >= score_threshold)
      picture = summaries.draw_detections(rgb, boxes, det["scores"][i], det["classes"][i], drawn)
      if train_ids is not None:
        _write_png(lut[train_ids], os.path.join(output_dir, "semantic", f"{stem}_labelIds.png"))
        picture = np.concatenate([picture, summaries.semantic_overlay(rgb, train_ids)], axis=1)
      if fg is not None:
        fg_u8 = np.round(np.clip(fg, 0.0, 1.0) * 255).astype(np.uint8)
        _write_png(fg_u8, os.path.join(output_dir, "foreground", f"{stem}.png"))
      _write_png(picture, os.path.join(output_dir, "vis", f"{stem}.png"))
      bar.update(1)

  pending = None  # (device outputs, batch) dispatched but not yet written
  batch: list[tuple[int, np.ndarray]] = []
  inputs = np.zeros((batch_size, *net_hw, 3), np.float32)

  def dispatch() -> None:
    nonlocal pending, batch, inputs
    # The rows after len(batch) stay zero: padding images whose outputs are never read.
    out = api.predict(model, variables, jnp.asarray(inputs), fusion=fusion)
    if pending is not None:  # written while the device runs `out`
      write(*pending)
    # A fresh buffer: on CPU jnp.asarray may share `inputs`, which the running batch still reads.
    pending, batch, inputs = (out, batch), [], np.zeros_like(inputs)

  for index, path in enumerate(paths):
    try:
      rgb = load_image(path)
    except (OSError, ValueError, Image.DecompressionBombError) as e:
      logging.error("%s: cannot read the image (%s); skipped.", path, e)
      failed.append((path, str(e)))
      bar.update(1)
      continue
    inputs[len(batch)] = preprocess(rgb, net_hw)
    batch.append((index, rgb))
    if len(batch) == batch_size:
      dispatch()
  if batch:
    dispatch()
  if pending is not None:
    write(*pending)
  bar.close()

  # Annotation ids from 1 in image order (COCOeval reads id 0 as "unmatched").
  detections.sort(key=lambda d: d["image_id"])  # stable: each image's own order is kept
  annotations = [{"id": k + 1, **d} for k, d in enumerate(detections)]
  coco = {
    "images": sorted(images, key=lambda entry: entry["id"]),
    "categories": coco_categories(),
    "annotations": annotations,
  }
  with open(os.path.join(output_dir, "detections.json"), "w") as f:
    json.dump(coco, f)
  return {
    "images": len(images),
    "detections": len(detections),
    "failed": failed,
    "output_dir": output_dir,
  }


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command's flags in `flag_values`.

  Called by the command itself, not at import, so that importing this module next to
  segrpn_jax.main (which defines --workdir and --step too) does not define a flag twice.

  Args:
    flag_values: where to define them; tests pass a fresh flags.FlagValues().
  """
  fv = flag_values
  flags.DEFINE_string("workdir", None, "The training run's folder.", flag_values=fv)
  flags.DEFINE_string("input", None, "Image folder, glob (quoted) or file.", flag_values=fv)
  flags.DEFINE_string("output", None, "Folder for the JSON files and PNGs.", flag_values=fv)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).", flag_values=fv)
  flags.DEFINE_enum("fusion", None, list(FUSIONS), "Inference fusion (default: the config's).",
                    flag_values=fv)  # fmt: skip
  flags.DEFINE_integer("batch_size", 1, "Images per forward pass.", lower_bound=1,
                       flag_values=fv)  # fmt: skip
  flags.DEFINE_float(
    "score_threshold", DEFAULT_SCORE_THRESHOLD,
    "The pictures in vis/ draw the detections scoring at least this; detections.json keeps all.",
    lower_bound=0.0, upper_bound=1.0, flag_values=fv,
  )  # fmt: skip


def check_arguments(workdir: str, input_path: str, output_dir: str) -> tuple[list[str], str]:
  """Checks the command's paths before anything is loaded.

  Args:
    workdir: --workdir, the training run's folder.
    input_path: --input.
    output_dir: --output.

  Returns:
    (image paths, their root) as `list_images` gives them.

  Raises:
    InputFileError: --workdir is not a folder, --output is an existing file, or --input names
      no images (or two that would write the same outputs).
    WorkdirError: --workdir holds no training run (no config.json).
  """
  if not os.path.isdir(workdir):
    raise errors.InputFileError(
      f"--workdir {workdir!r} is not a folder: give the --workdir of a training run "
      "(python -m segrpn_jax.main --mode=train --workdir=...)."
    )
  if not os.path.isfile(os.path.join(workdir, checkpointing.CONFIG_FILE)):
    raise errors.WorkdirError(
      f"--workdir {workdir!r} holds no training run ({checkpointing.CONFIG_FILE} not found): "
      "give the --workdir a python -m segrpn_jax.main --mode=train run wrote."
    )
  if os.path.exists(output_dir) and not os.path.isdir(output_dir):
    raise errors.InputFileError(
      f"--output {output_dir!r} is a file: give a folder (new or existing) for the results."
    )
  paths, root = list_images(input_path)
  relative_names(paths, root)
  return paths, root


def main(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """The command: predicts --input with the run in --workdir and writes --output.

  Args:
    argv: the arguments left after the flags (none are accepted).
    flag_values: the parsed flags of `define_flags`.
  """
  errors.check_command_line(argv, flag_values, ("workdir", "input", "output"))
  flag = {name: flag_values[name].value for name in flag_values}
  workdir, output_dir = errors.expand_path(flag["workdir"]), errors.expand_path(flag["output"])
  paths, root = check_arguments(workdir, errors.expand_path(flag["input"]), output_dir)
  try:
    config, model, variables = api.load(workdir, flag["step"])
  except FileNotFoundError as e:
    if isinstance(e, errors.UserError):
      raise
    raise errors.CheckpointError(f"--workdir {workdir!r} cannot be used: {e}") from e
  start = time.perf_counter()
  summary = predict_images(
    config,
    model,
    variables,
    paths,
    output_dir,
    fusion=flag["fusion"],
    batch_size=flag["batch_size"],
    root=root,
    score_threshold=flag["score_threshold"],
  )
  logging.info(
    "Wrote %d images, %d detections to %s in %.1f s.",
    summary["images"],
    summary["detections"],
    summary["output_dir"],
    time.perf_counter() - start,
  )
  if summary["failed"]:
    listing = "\n".join(f"  {path}: {error}" for path, error in summary["failed"])
    raise SystemExit(
      f"{len(summary['failed'])} of {len(paths)} images could not be read and were skipped "
      f"(every other image was written to {summary['output_dir']}):\n{listing}"
    )


if __name__ == "__main__":
  define_flags()
  errors.app_run(main)
