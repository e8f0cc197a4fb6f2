"""Draws the paper's figures from a training run; the numbers come from segrpn_jax.paper.analysis.

  python -m segrpn_jax.paper.figures FIGURE --workdir RUN --output FILE.png [--image N]
      [--split validation]

FIGURE:
  rpn-maps            Figs. 1, 3a: per level P2..P6 the RPN_det feature map (channel mean) and
                      objectness (max over a position's anchors), and with RPN_mask the same for
                      RPN_mask and the fused objectness of the run's fusion, beside the image.
  proposal-filtering  Fig. 3b: per level, positions whose anchors overlap a ground truth at
                      IoU > 0.5 (yellow), and after top-k and NMS the positions of true (green)
                      and false (red) positive proposals; TP/FP/FN per level in the titles.
  loss-curves         Fig. 4: objectness and box losses of RPN_det and RPN_mask against the step.
  fg-rois             Fig. 6: foreground ROIs per 2000 proposals after NMS against the step;
                      repeat --workdir to overlay runs.
  scale-division      Fig. 7: one image's class-agnostic ground truth and its division into levels
                      2..6 under case1, case2 and case3 (needs only the run's config and data).
  missed-objects      Fig. 5: ground truth (blue), detections (red) and the ground truths without
                      a detection that the class-agnostic map (the semantic thing map for the
                      baseline) covers by >= 50 % (green), with their count.

Run from the repository root, like the main job.
"""

import argparse
import os
import sys

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only, no display
import matplotlib.patches as mpatches
import matplotlib.pyplot as plt

from segrpn_jax import api
from segrpn_jax.models import rpn as rpn_lib
from segrpn_jax.paper import analysis

FIGURES = (
  "rpn-maps",
  "proposal-filtering",
  "loss-curves",
  "fg-rois",
  "scale-division",
  "missed-objects",
)


def _image_batch(config, args):
  batch = analysis.eval_example(config, args.image, args.split)
  return batch, analysis.display_image(batch["image"][0])


def _off(ax):
  ax.set_xticks([])
  ax.set_yticks([])


def rpn_maps(args) -> None:
  config, model, variables = analysis.load_run(args.workdir[0], "rpn-maps")
  batch, image = _image_batch(config, args)
  maps = analysis.rpn_map_images(jax.device_get(api.rpn_maps(model, variables, batch["image"])))
  fusion = config.model.fusion.inference if config.model.fusion.inference != "none" else "roi+rpn"
  columns = ["rpn_det_features", "rpn_det_objectness"]
  if config.model.class_agnostic:
    columns += ["rpn_mask_features", "rpn_mask_objectness", f"fused_objectness/{fusion}"]
  fig, axes = plt.subplots(len(maps), len(columns) + 1, figsize=(2.6 * (len(columns) + 1), 8))
  for row, (level, images) in enumerate(maps.items()):
    axes[row, 0].imshow(image)
    axes[row, 0].set_ylabel(level)
    for col, name in enumerate(columns, start=1):
      vmax = 1.0 if "objectness" in name else None
      axes[row, col].imshow(images[name], cmap="jet", vmin=0.0 if vmax else None, vmax=vmax)
      if row == 0:
        axes[row, col].set_title(name.replace("_", " "), fontsize=8)
    for ax in axes[row]:
      _off(ax)
  fig.suptitle(f"RPN maps, image {args.image} ({os.path.basename(args.workdir[0])})")
  fig.savefig(args.output, dpi=100, bbox_inches="tight")


def proposal_filtering(args) -> None:
  config, model, variables = analysis.load_run(args.workdir[0], "proposal-filtering")
  fusion = args.fusion or config.model.fusion.inference
  batch, image = _image_batch(config, args)
  out = jax.device_get(api.predict(model, variables, batch["image"], fusion=fusion))
  proposals = {k: np.asarray(v[0]) for k, v in out["proposals"].items()}
  levels = analysis.proposal_filtering(
    analysis.run_anchors(config),
    tuple(config.data.image_size),
    tuple(config.model.anchor.strides),
    proposals,
    batch["boxes"][0],
    batch["valid"][0],
  )
  fig, axes = plt.subplots(len(levels), 2, figsize=(10, 2.4 * len(levels)))
  for row, (level, r) in enumerate(levels.items()):
    h, w = r["before"].shape
    extent = (0, image.shape[1], image.shape[0], 0)
    for col, layers in enumerate(
      (
        [(r["before"], (1.0, 1.0, 0.0))],
        [(r["fp"], (1.0, 0.0, 0.0)), (r["tp"], (0.0, 0.8, 0.0))],
      )
    ):
      ax = axes[row, col]
      ax.imshow(image)
      for mask, colour in layers:
        overlay = np.zeros((h, w, 4))
        overlay[mask] = (*colour, 0.8)
        ax.imshow(overlay, extent=extent, interpolation="nearest")
      _off(ax)
    axes[row, 0].set_title(f"P{level}: anchors IoU>0.5 with {r['num_gt']} gt", fontsize=8)
    axes[row, 1].set_title(
      f"P{level} after top-k+NMS: TP {r['num_tp']}, FP {r['num_fp']}, FN {r['num_fn']}",
      fontsize=8,
    )
  fig.suptitle(f"Proposal filtering, fusion {fusion}, image {args.image}")
  fig.savefig(args.output, dpi=100, bbox_inches="tight")


def loss_curves(args) -> None:
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
  fig.savefig(args.output, dpi=100, bbox_inches="tight")


def fg_rois(args) -> None:
  fig, ax = plt.subplots(figsize=(6, 3.5))
  for workdir in args.workdir:
    steps, values = analysis.fg_roi_series(workdir)
    ax.plot(steps, values, label=os.path.basename(os.path.normpath(workdir)))
  ax.set_xlabel("step")
  ax.set_ylabel("foreground ROIs per 2000 proposals")
  ax.legend()
  fig.savefig(args.output, dpi=100, bbox_inches="tight")


def scale_division(args) -> None:
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
  fig.savefig(args.output, dpi=100, bbox_inches="tight")


def missed_objects(args) -> None:
  config, model, variables = analysis.load_run(args.workdir[0], "missed-objects")
  batch, image = _image_batch(config, args)
  fusion = args.fusion or config.model.fusion.inference  # as proposal-filtering: one compile
  out = jax.device_get(api.predict(model, variables, batch["image"], fusion=fusion))
  key, prob = analysis.foreground_map(out)
  det = out["detections"]
  r = analysis.missed_objects(
    batch["boxes"][0],
    batch["valid"][0],
    det["boxes"][0],
    det["scores"][0],
    det["valid"][0],
    prob[0],
  )
  fig, ax = plt.subplots(figsize=(10, 5.5))
  ax.imshow(image)
  ax.imshow(np.ma.masked_where(prob[0] <= 0.5, prob[0]), cmap="Greens", alpha=0.35, vmin=0, vmax=1)
  boxes = [
    (batch["boxes"][0][batch["valid"][0]], "blue", 1.0),
    (det["boxes"][0][r["shown"]], "red", 1.0),
    (batch["boxes"][0][r["recovered"]], "lime", 2.5),
  ]
  for group, colour, width in boxes:
    for x1, y1, x2, y2 in group:
      ax.add_patch(mpatches.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, lw=width))
  _off(ax)
  ax.set_title(
    f"missed by the detector, covered by {key} > 0.5: {r['num_recovered']} "
    f"(of {r['num_missed']} missed)"
  )
  fig.savefig(args.output, dpi=100, bbox_inches="tight")


DRAW = {
  "rpn-maps": rpn_maps,
  "proposal-filtering": proposal_filtering,
  "loss-curves": loss_curves,
  "fg-rois": fg_rois,
  "scale-division": scale_division,
  "missed-objects": missed_objects,
}


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("figure", choices=FIGURES)
  parser.add_argument("--workdir", action="append", required=True, help="a training run")
  parser.add_argument("--output", required=True, help="the PNG file to write")
  parser.add_argument("--image", type=int, default=0, help="index in the evaluation split")
  parser.add_argument("--split", default=None, help="TFDS split (default: the run's eval split)")
  parser.add_argument("--fusion", choices=rpn_lib.FUSIONS, help="inference fusion (default: run's)")
  args = parser.parse_args(argv)
  if len(args.workdir) > 1 and args.figure != "fg-rois":
    parser.error(f"{args.figure} draws one run; pass one --workdir (only fg-rois overlays runs).")
  try:
    DRAW[args.figure](args)
  except (FileNotFoundError, IndexError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
