"""Draws the paper's figures from a training run; the numbers come from segrpn_jax.paper.analysis.

  python -m segrpn_jax.paper.figures --figure=NAME --workdir=RUN --output=FILE.png [--image=N]
      [--split=SPLIT] [--fusion=F] [--min_side=PX]

--figure:
  rpn-features        Fig. 1 (its ResNet+FPN half): the RPN feature map (channel mean) of every
                      level 2-6 beside the image, grayscale, darker = lower activation.
  rpn-maps            Fig. 3a: per level 2-6 one RPN feature map and three ROI probability maps,
                      one per aspect ratio, grayscale (darker = lower), under --fusion (default:
                      the run's inference fusion).
  proposal-filtering  Fig. 3b: per level, the positions whose proposals (every anchor's decoded
                      box, before top-k and NMS) overlap a ground truth at IoU > 0.5 (yellow),
                      and after filtering with the run's training counts (the paper's 2000
                      proposals) the positions of true (green) and false (red) positive
                      proposals; TP/FP/FN proposals per level (FN: proposals above IoU 0.5
                      that filtering dropped) and a legend. --fusion defaults to the run's
                      training fusion.
  loss-curves         Fig. 4: objectness and box losses of RPN_det and RPN_mask against the step.
  missed-objects      Fig. 5: the image with ground truth (blue), detections (red) and the large
                      ground truths (sqrt(area) >= --min_side input pixels, default
                      64 x config.model.size_scale: 64 at 512x1024) that no detection finds but
                      the class-agnostic or semantic foreground covers by >= 50 % (green), with a
                      legend and counts; beside it the class-agnostic and the semantic map. The
                      paper's network is SegRPN without RPN_mask: train it with
                      --config=configs/segrpn.py:synthetic,no_rpn_mask (or :no_rpn_mask).
  fg-rois             Fig. 6: foreground ROIs per 2000 proposals after NMS against the step;
                      repeat --workdir to overlay runs, each named by its setting and fusion.
  scale-division      Fig. 7: one image's class-agnostic ground truth and its division into levels
                      2..6 under case1, case2 and case3 (needs only the run's config and data).

A problem with the command line, the run or the image is reported as one error block (exit
status 2); --verbose adds the traceback.
"""

import types

import jax
import matplotlib
import numpy as np
from absl import flags

matplotlib.use("Agg")  # files only, no display
import matplotlib.patches as mpatches
import matplotlib.pyplot as plt

from segrpn_jax import api, errors
from segrpn_jax.datasets import labels
from segrpn_jax.models import rpn as rpn_lib
from segrpn_jax.paper import analysis

FIGURES = (
  "rpn-features",
  "rpn-maps",
  "proposal-filtering",
  "loss-curves",
  "fg-rois",
  "scale-division",
  "missed-objects",
)
_FLAG_NAMES = ("figure", "workdir", "output", "image", "split", "fusion", "min_side")


def _image_batch(config, args):
  batch = analysis.eval_example(config, args.image, args.split)
  return batch, analysis.display_image(batch["image"][0])


def _off(ax):
  ax.set_xticks([])
  ax.set_yticks([])


def _boxes(ax, boxes_nx4, colour, width: float) -> None:
  for x1, y1, x2, y2 in np.asarray(boxes_nx4):
    ax.add_patch(mpatches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, lw=width))


def _scaled(ax, image_2d, title: str, fontsize: int = 7) -> None:
  """A map in grayscale, black at its minimum and white at its maximum, with its range."""
  lo, hi = float(np.min(image_2d)), float(np.max(image_2d))
  ax.imshow(image_2d, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1e-6)
  ax.set_title(f"{title} [{lo:.3g}, {hi:.3g}]", fontsize=fontsize)
  _off(ax)


def _map_fusion(config, args) -> str:
  """The fusion whose RPN maps are drawn: --fusion, else the run's inference fusion."""
  return args.fusion or config.model.fusion.inference


def _rpn_map_images(args, figure: str):
  config, model, variables = analysis.load_run(args.workdir[0], figure)
  batch, image = _image_batch(config, args)
  fusion = _map_fusion(config, args)
  maps = jax.device_get(api.rpn_maps(model, variables, batch["image"]))
  return config, image, fusion, analysis.rpn_map_images(maps, fusion)


def _feature_name(fusion: str) -> str:
  return "F_det + F_det*F_mask" if fusion in ("rpn", "roi+rpn") else "F_det"


def rpn_features(args) -> plt.Figure:
  config, image, fusion, maps = _rpn_map_images(args, "rpn-features")
  fig, axes = plt.subplots(1, len(maps) + 1, figsize=(3.2 * (len(maps) + 1), 2.4))
  axes[0].imshow(image)
  axes[0].set_title(f"image {args.image}", fontsize=8)
  _off(axes[0])
  for ax, (level, m) in zip(axes[1:], maps.items(), strict=True):
    _scaled(ax, m["features"], f"level {level[1:]}", fontsize=8)
  fig.suptitle(
    f"RPN feature maps as class-agnostic segmentation maps, ResNet+FPN levels 2-6 "
    f"(run: {analysis.run_label(config)}; {_feature_name(fusion)}, channel mean; "
    "darker = lower activation, each map scaled to its own range)",
    fontsize=9,
  )
  return fig


def rpn_maps(args) -> plt.Figure:
  config, image, fusion, maps = _rpn_map_images(args, "rpn-maps")
  ratios = tuple(config.model.anchor.aspect_ratios)
  fig = plt.figure(figsize=(3.2 * (len(ratios) + 1), 1.9 * (len(maps) + 2)))
  grid = fig.add_gridspec(len(maps) + 2, len(ratios) + 1)
  top = fig.add_subplot(grid[:2, :])
  top.imshow(image)
  top.set_title(f"image {args.image}", fontsize=8)
  _off(top)
  for row, (level, m) in enumerate(maps.items(), start=2):
    _scaled(fig.add_subplot(grid[row, 0]), m["features"], f"{level} RPN feature map")
    for col, (ratio, prob) in enumerate(zip(ratios, m["objectness"], strict=True), start=1):
      _scaled(fig.add_subplot(grid[row, col]), prob, f"{level} ROI prob., ratio {ratio:g}")
  fig.suptitle(
    f"RPN feature map ({_feature_name(fusion)}, channel mean) and ROI probability maps per "
    f"aspect ratio (h/w), fusion {fusion}\nrun: {analysis.run_label(config)}; darker = lower, each "
    "map scaled to its own [min, max]",
    fontsize=9,
  )
  return fig


YELLOW, GREEN, RED = (1.0, 0.9, 0.0), (0.0, 0.8, 0.0), (0.9, 0.0, 0.0)


def proposal_filtering(args) -> plt.Figure:
  config, model, variables = analysis.load_run(args.workdir[0], "proposal-filtering")
  fusion = args.fusion or config.model.fusion.train  # the proposals of a training step
  batch, image = _image_batch(config, args)
  out = jax.device_get(analysis.filtering_outputs(model, variables, batch["image"], fusion))
  anchors = analysis.run_anchors(config)
  levels = analysis.proposal_filtering(
    analysis.split_levels(out["decoded_boxes"][0], anchors),
    tuple(config.data.image_size),
    tuple(config.model.anchor.strides),
    {k: np.asarray(v[0]) for k, v in out["proposals"].items()},
    batch["boxes"][0],
    batch["valid"][0],
  )
  r = config.model.rpn
  fig, axes = plt.subplots(len(levels), 2, figsize=(10, 2.5 * len(levels) + 0.8))
  extent = (0, image.shape[1], image.shape[0], 0)
  for row, (level, c) in enumerate(levels.items()):
    h, w = c["before"].shape
    for col, layers in enumerate(([(c["before"], YELLOW)], [(c["fp"], RED), (c["tp"], GREEN)])):
      ax = axes[row, col]
      ax.imshow(image)
      for mask, colour in layers:
        overlay = np.zeros((h, w, 4))
        overlay[mask] = (*colour, 0.85)
        ax.imshow(overlay, extent=extent, interpolation="nearest")
      _boxes(ax, batch["boxes"][0][batch["valid"][0]], "blue", 0.8)
      _off(ax)
    axes[row, 0].set_title(
      f"level {level}, before filtering: {c['num_positive']} proposals at "
      f"{c['num_before']} positions overlap {c['num_gt']} ground truths",
      fontsize=8,
    )
    axes[row, 1].set_title(
      f"level {level}, after filtering: TP {c['num_tp']}, FP {c['num_fp']}, FN {c['num_fn']}",
      fontsize=8,
    )
  fig.legend(
    handles=[
      mpatches.Patch(
        color=YELLOW, label="proposals at IoU > 0.5 with a ground truth, before filtering"
      ),
      mpatches.Patch(color=GREEN, label="true positive (kept, IoU > 0.5)"),
      mpatches.Patch(color=RED, label="false positive (kept, IoU <= 0.5)"),
      mpatches.Patch(ec="blue", fill=False, label="ground truth"),
    ],
    loc="lower center",
    ncol=4,
    fontsize=8,
  )
  total = sum(c["num_tp"] + c["num_fp"] for c in levels.values())
  fig.suptitle(
    f"Proposal filtering of RPN_det, fusion {fusion}, image {args.image} "
    f"(run: {analysis.run_label(config)})\nfiltering as in training: top "
    f"{r.pre_nms_topk_train} per level, NMS {r.nms_threshold:g}, {r.post_nms_topk_train} "
    f"proposals per image ({total} kept); "
    "FN = proposals with IoU > 0.5 before filtering that it dropped",
    fontsize=9,
  )
  fig.tight_layout(rect=(0, 0.04, 1, 1))
  return fig


def loss_curves(args) -> plt.Figure:
  workdir = args.workdir[0]
  analysis.require_rpn_mask(analysis.load_config(workdir), workdir, "loss-curves")
  series = analysis.loss_series(workdir)
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  for ax, part in zip(axes, ("objectness", "box"), strict=True):
    for rpn in ("rpn_det", "rpn_mask"):
      steps, values = series[f"train/{rpn}/{part}"]
      ax.plot(steps, values, label=rpn.replace("rpn_", "RPN_"))
    ax.set_xlabel("step")
    ax.set_title(f"{part} loss")
    ax.legend()
  return fig


def fg_rois(args) -> plt.Figure:
  configs = [analysis.load_config(workdir) for workdir in args.workdir]
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for workdir, label in zip(args.workdir, analysis.run_labels(configs), strict=True):
    steps, values = analysis.fg_roi_series(workdir)
    ax.plot(steps, values, label=label)
  ax.set_xlabel("step")
  ax.set_ylabel("foreground ROIs per 2000 proposals")
  ax.set_title("Foreground ROIs per 2000 after filtering by NMS", fontsize=9)
  ax.legend(fontsize=8)
  return fig


def scale_division(args) -> plt.Figure:
  config = analysis.load_config(args.workdir[0])
  batch = analysis.eval_example(config, args.image, args.split)
  fig, axes = plt.subplots(3, 6, figsize=(18, 5))
  for row, case in enumerate(("case1", "case2", "case3")):
    d = analysis.scale_division(
      batch["instance_map"][0],
      batch["boxes"][0],
      batch["valid"][0],
      batch["crowd"][0],
      case,
      float(config.model.size_scale),
      tuple(config.model.anchor.strides),
    )
    axes[row, 0].imshow(d["ground_truth"], cmap="gray")
    axes[row, 0].set_ylabel(case)
    axes[row, 0].set_title("class-agnostic ground truth" if row == 0 else "", fontsize=8)
    for j, target in enumerate(d["targets"]):
      ax = axes[row, j + 1]
      ax.imshow(target, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
      ax.set_title(f"{case} L{j + 2}: {d['counts'][j]} instances", fontsize=8)
    for ax in axes[row]:
      _off(ax)
  fig.suptitle(f"Scale division, image {args.image}")
  return fig


def missed_objects(args) -> plt.Figure:
  config, model, variables = analysis.load_run(args.workdir[0], "missed-objects")
  batch, image = _image_batch(config, args)
  fusion = args.fusion or config.model.fusion.inference
  out = jax.device_get(api.predict(model, variables, batch["image"], fusion=fusion))
  maps = analysis.foreground_maps(out)
  min_side = args.min_side if args.min_side is not None else 64.0 * config.model.size_scale
  det = out["detections"]
  gt_boxes, gt_valid = batch["boxes"][0], batch["valid"][0]
  r = analysis.missed_objects(
    gt_boxes, gt_valid, det["boxes"][0], det["scores"][0], det["valid"][0], maps, min_side
  )
  panels = 1 + len(maps)
  fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.6))
  ax = axes[0]
  ax.imshow(image)
  _boxes(ax, gt_boxes[r["recovered"]], "lime", 2.5)  # under the ground truth's blue outline
  _boxes(ax, gt_boxes[gt_valid], "blue", 1.0)
  _boxes(ax, det["boxes"][0][r["shown"]], "red", 1.0)
  names = " or ".join(maps)
  ax.legend(
    handles=[
      mpatches.Patch(ec="blue", fill=False, label=f"ground truth ({r['num_gt']})"),
      mpatches.Patch(ec="red", fill=False, label=f"detections, score >= 0.5 ({r['num_shown']})"),
      mpatches.Patch(
        ec="lime",
        fill=False,
        lw=2.5,
        label=f"large, missed, covered >= 50 % by {names} ({r['num_recovered']} of "
        f"{r['num_large_missed']} large missed)",
      ),
    ],
    loc="upper center",
    bbox_to_anchor=(0.5, -0.02),
    fontsize=8,
  )
  ax.set_title(f"image {args.image}", fontsize=9)
  _off(ax)
  height, width = config.data.image_size
  colours = labels.train_id_colors() / 255.0
  for ax, (name, prob) in zip(axes[1:], maps.items(), strict=True):
    if name == "semantic" and "semantic_labels" in out:
      ax.imshow(colours[np.asarray(out["semantic_labels"][0])])
      ax.set_title("semantic segmentation (argmax, Cityscapes colours)", fontsize=9)
    else:
      ax.imshow(prob, cmap="gray", vmin=0.0, vmax=1.0)
      ax.set_title(f"{name} segmentation (foreground probability)", fontsize=9)
    _off(ax)
  fig.suptitle(
    f"run: {analysis.run_label(config)}; inference fusion {fusion}\nlarge = sqrt(box area) >= "
    f"{min_side:g} px at the {height}x{width} input ({r['num_large']} of {r['num_gt']} ground "
    "truths); found = "
    "a detection with score >= 0.5 at IoU >= 0.5",
    fontsize=9,
  )
  return fig


DRAW = {
  "rpn-features": rpn_features,
  "rpn-maps": rpn_maps,
  "proposal-filtering": proposal_filtering,
  "loss-curves": loss_curves,
  "fg-rois": fg_rois,
  "scale-division": scale_division,
  "missed-objects": missed_objects,
}


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command's flags in `flag_values`.

  Called by the command itself, not at import, so that importing this module next to
  segrpn_jax.main (which defines --workdir too) does not define a flag twice.

  Args:
    flag_values: where to define them; `parse_args` uses a fresh flags.FlagValues().
  """
  fv = flag_values
  flags.DEFINE_enum("figure", None, list(FIGURES), "The figure to draw.", flag_values=fv)
  flags.DEFINE_multi_string(
    "workdir", [], "A training run; repeat it for fg-rois to overlay runs.", flag_values=fv
  )
  flags.DEFINE_string("output", None, "The PNG file to write.", flag_values=fv)
  flags.DEFINE_integer("image", 0, "Index of the image in the evaluation split.", flag_values=fv)
  flags.DEFINE_string("split", None, "TFDS split (default: the run's eval split).", flag_values=fv)
  flags.DEFINE_enum(
    "fusion",
    None,
    list(rpn_lib.FUSIONS),
    "The RPN fusion (default: the run's training fusion for proposal-filtering, its inference "
    "fusion otherwise).",
    flag_values=fv,
  )
  flags.DEFINE_float(
    "min_side",
    None,
    "missed-objects: sqrt(box area) in input pixels from which an object is large (default: "
    "64 x config.model.size_scale).",
    flag_values=fv,
  )


def args_from(flag_values: flags.FlagValues, argv: list[str]) -> types.SimpleNamespace:
  """The parsed flags of `define_flags` as one namespace, checked as the figures need them.

  Args:
    flag_values: parsed flags holding those of `define_flags`.
    argv: what absl left after the flags (the program name only, when the line is right).

  Returns:
    figure, workdir (a list of runs), output, image, split, fusion and min_side.

  Raises:
    errors.UserError: a missing flag, a stray argument, or several runs for a one-run figure.
  """
  if len(argv) > 1:
    raise errors.UserError(
      f"unexpected arguments {argv[1:]}; every option is a --flag=value, e.g. "
      "--figure=rpn-maps --workdir=RUN --output=rpn_maps.png."
    )
  args = types.SimpleNamespace(**{name: flag_values[name].value for name in _FLAG_NAMES})
  if args.figure is None:
    raise errors.UserError(f"--figure is required: one of {', '.join(FIGURES)}.")
  for name in ("workdir", "output"):
    if not getattr(args, name):
      raise errors.UserError(f"--{name} is required for the {args.figure} figure.")
  if len(args.workdir) > 1 and args.figure != "fg-rois":
    raise errors.UserError(
      f"{args.figure} draws one run, but --workdir was given {len(args.workdir)} times; pass "
      "one --workdir (only fg-rois overlays runs)."
    )
  args.workdir = [errors.expand_path(w) for w in args.workdir]
  args.output = errors.expand_path(args.output)
  return args


def parse_args(argv: list[str]) -> types.SimpleNamespace:
  """The command line as `python -m segrpn_jax.paper.figures` parses it, in a fresh
  flags.FlagValues (argv without the program name).

  Raises:
    errors.UserError: an unknown flag, a value absl rejects, or what `args_from` rejects.
  """
  flag_values = flags.FlagValues()
  define_flags(flag_values)
  try:
    rest = flag_values(["figures", *argv])
  except flags.Error as e:
    raise errors.UserError(f"{e}; see python -m segrpn_jax.paper.figures --help.") from e
  return args_from(flag_values, rest)


def write(args: types.SimpleNamespace) -> int:
  """Draws args.figure and writes it to args.output as a PNG."""
  fig = DRAW[args.figure](args)
  fig.savefig(args.output, dpi=100, bbox_inches="tight")
  plt.close(fig)
  print(f"wrote {args.output}")
  return 0


def run_command(argv: list[str]) -> int:
  """The command in-process (argv without the program name): its exit status, with a
  UserError printed as one block on stderr (status 2), as `python -m` would."""
  return errors.run(lambda: write(parse_args(argv)))


def main(argv: list[str]) -> int:
  """The command's absl main: the flags are those of `define_flags` in flags.FLAGS."""
  return write(args_from(flags.FLAGS, argv))


if __name__ == "__main__":
  define_flags()
  errors.app_run(main)
