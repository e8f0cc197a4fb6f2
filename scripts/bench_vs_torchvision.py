"""Step times of our models next to torchvision's Faster R-CNN ResNet-50-FPN on the same work.

  pip install -e '.[bench]'                       # torch and torchvision, for benchmarks only
  python scripts/bench_vs_torchvision.py          # CPU: 512x1024, batch 1, 6 steps x 2 rounds
  python scripts/bench_vs_torchvision.py --size 256x512 --steps 3 --rounds 1 --json bench.json
  python scripts/bench_vs_torchvision.py --modes infer --contenders torchvision ours-det
  python scripts/bench_vs_torchvision.py --device gpu --json gpu.json   # the prepared GPU run

What it measures. For each mode (`train`: forward with targets, the summed losses, backward and
an SGD step with momentum 0.9 and weight decay 1e-4; `infer`: the inference forward with its
post-processing) and each contender, the wall time of one step on one random batch
(`segrpn_jax.benchmark.random_batch`: the same images, boxes and classes for every contender):

  torchvision  torchvision.models.detection.FasterRCNN on resnet50(weights=None,
               norm_layer=FrozenBatchNorm2d) through _resnet_fpn_extractor(trainable_layers=3)
  ours-det     configs/baseline.py with model.semantic_head = False: our Faster R-CNN
  ours-segrpn  configs/case1.py: SegRPN, class-agnostic module, RPN_mask, roi+rpn fusion
(`segrpn_jax.benchmark.paper_config`, the config every bench script measures.)

On a CPU every (contender, mode) runs in its own process (this script re-invoked with --worker),
so that no framework's threads, allocator or caches disturb another's. A worker makes `--warmup`
calls
(the first compiles ours), then times `--steps` calls; the parent alternates the contenders
within each of `--rounds` rounds, so that a slow spell of the machine hits all of them, and
reports the median over all of a contender's timed steps with its ratio to torchvision's (time
over torchvision's time: above 1 is slower). For ours it also prints the FLOPs XLA counts in the
compiled program (`cost_analysis()`; skipped where the backend does not give them) and the
implied GFLOP/s. XLA counts every operation, NMS loops once per loop body; no FLOPs are printed
for torch.

"Same work": the torchvision model is built with our settings (read from configs/default.py):
  - ResNet-50 v1.5 with frozen BatchNorm, the config's frozen stages (freeze_at=2, the stem and
    res2: torchvision's trainable_layers=3 trains layer2..layer4; freeze_at=0: all five train),
    FPN P2..P5 + P6 by max pool, 256 channels;
  - anchors 32..512, one size per level, aspect ratios 0.5, 1, 2; RPN IoU 0.3 / 0.7, 256 anchors
    per image with at most half positive; pre-NMS top-k per level 2000 (train) / 1000 (test),
    post-NMS top-k per image 2000 / 1000, NMS 0.7 per level; RPN box weights 1, 1, 1, 1;
  - RoIAlign 7x7 with sampling ratio 2 on P2..P5 (canonical 224 at level 4), two FC 1024,
    9 classes (8 things + background), 512 ROIs per image with at most 25 % foreground (IoU
    0.5), ground truth appended to the proposals, box weights 10, 10, 5, 5;
  - inference: score threshold 0.05, NMS 0.5 per class, 100 detections per image;
  - no resizing: torchvision's transform gets min_size / max_size equal to the image's sides
    (it still runs its scale-1 bilinear resize, a few ms) and mean 0 / std 1, since the batch is
    already normalised (docs/architecture.md, the batch contract); sizes must be multiples of 32
    so that its padding to 32 adds nothing.
What differs: our programs have static shapes (padded proposals, fixed-size NMS), torchvision
works on the surviving boxes only (e.g. 447 of 1000 proposals after its RPN NMS at 128x256);
torchvision's RoIAlign is its legacy aligned=False, ours detectron2's aligned=True; the losses'
exact forms (smooth L1 betas) are each implementation's own. Weights are random: every class
score is about 1/9 > 0.05, so both detection NMS see all candidates.

GPU (`--device gpu`): one prepared run for a machine with an NVIDIA GPU, within --budget_s
(480 s) in all. In order:
  1. what is missing is installed: JAX's CUDA build (`pip install -e '.[cuda]'`, jax[cuda12]) and
     torch/torchvision with CUDA (`pip install -e '.[bench]'`); without the latter the
     torchvision contender is left out and said so;
  2. the README's quick start, `python -m segrpn_jax.main --config=configs/case1.py:synthetic
     --workdir=...` from the repository root, to its end (dataset build, compilation, training,
     evaluation, checkpoints), with its wall time, its checkpoints and its final metrics: the one
     end-to-end check on a GPU (stopped after --quickstart_timeout_s, 240 s);
  3. our programs (2 contenders x 2 modes x 2 batch sizes x 2 dtypes) compiled --compile_jobs (8)
     at a time into a persistent compilation cache of the run, each compile time reported;
  4. the timings: batch 1 and 8, float32 and bfloat16 (ours: config.model.dtype; torchvision:
     torch.autocast(dtype=torch.bfloat16) around the forward and the losses), both modes, each
     call ended by block_until_ready / torch.cuda.synchronize(); one worker per contender and
     batch size; cells that no longer fit in the budget are listed as skipped.
"float32" on the GPU is each framework run as XLA runs by default: matmuls and convolutions on
TF32 tensor cores (torch: set_float32_matmul_precision('high'), cudnn.allow_tf32), kernels
chosen by timing them on the benchmark's shapes (XLA's autotuning; torch: cudnn.benchmark, done
in the warm-up calls).
One table per (batch, dtype), the GPU, the versions and the quick start's result are printed.

Denormals: a randomly initialised frozen-BN network produces denormal floats, on which x86 is
slow; XLA flushes them to zero, torch computes them unless told not to, which has been seen to
make torch 2-3x slower on this model (at 128x256 on one thread it cost 5-15 %, train and
inference). The torchvision worker calls torch.set_flush_denormal(True) before anything else,
so that its threads inherit the setting, and torch.set_num_threads(--torch_threads: cores).

Load: other processes on the machine slow every contender, but not equally. torch's OpenMP
splits each op statically over its threads and waits for all of them, so when a thread is
descheduled the op waits for it (on 2 cores with a load average of 5, a 67 MFLOP 1x1 conv took
31 ms, and torchvision's inference at 128x256 took 4.0 s with 2 threads, 0.9 s with 1); XLA's
thread pool shares out small tasks, so a descheduled thread delays it less. The load average is
printed with the table, with a warning when the machine was busy at the start; `--torch_threads
1` shows how much of torch's time that is.
"""

import argparse
import importlib.metadata
import importlib.util
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

TORCHVISION = "torchvision"
OURS_DET = "ours-det"
OURS_SEGRPN = "ours-segrpn"
CONTENDERS = (TORCHVISION, OURS_DET, OURS_SEGRPN)
REFERENCE = TORCHVISION  # ratios are times over this contender's
MODES = ("train", "infer")
DEVICES = ("cpu", "gpu")
DTYPES = ("float32", "bfloat16")
# --device's defaults: name -> (cpu, gpu). A GPU times fast and steadily: more steps, one round.
DEVICE_DEFAULTS = {
  "batch": ([1], [1, 8]),
  "dtype": (["float32"], ["float32", "bfloat16"]),
  "steps": (6, 8),
  "warmup": (2, 2),
  "rounds": (2, 1),
  "budget_s": (None, 480.0),
}
GPU_BUDGET_S = DEVICE_DEFAULTS["budget_s"][1]  # the whole GPU script: installs and quick start too
INSTALL_HINT = "pip install -e '.[bench]'"
CUDA_INSTALL_HINT = "pip install -e '.[cuda]'"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The README's quick start when its first code block holds none (readme_quickstart).
QUICKSTART = ("-m", "segrpn_jax.main", "--config=configs/case1.py:synthetic")
QUICKSTART_TIMEOUT_S = 240.0  # the quick start's share of the GPU budget
QUICKSTART_RESERVE_S = 120.0  # of the budget, kept for the comparison after the quick start
QUICKSTART_METRICS = ("mAP50", "AR@1000", "mIoU", "mIoU*")
WORKER_GUESS_S = 60.0  # a worker's length before one of its kind has run (for --budget_s)
CELL_GUESS_S = 20.0  # a worker starts no cell later than this before its deadline
POLL_S = 0.5  # how often the concurrent compilations are looked at
PIP_TIMEOUT_S = 150.0  # one install of the GPU run's preparation
VERSIONED = ("torch", "torchvision", "jax", "jaxlib", "jax-cuda12-plugin")
RESULT_PREFIX = "BENCH_RESULT "  # marks the worker's JSON line among anything else on stdout
SIZE_MULTIPLE = 32  # torchvision pads images to multiples of 32 (GeneralizedRCNNTransform)
GIGA = 1e9
STDERR_TAIL_LINES = 30  # of a failed worker's stderr, shown by the parent
ERROR_CHARS = 2000  # of a failed cell's error message, in its record
# A 1-minute load average above this before the first worker: more than one core's worth of
# other work, enough to skew torch against XLA (module docstring, "Load").
BUSY_LOAD = 1.0


def parse_size(text: str) -> tuple[int, int]:
  """Parses --size.

  Args:
    text: "HxW", e.g. "512x1024"; both sides positive multiples of 32.

  Returns:
    (height, width).

  Raises:
    argparse.ArgumentTypeError: on anything else.
  """
  parts = text.lower().split("x")
  if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
    raise argparse.ArgumentTypeError(f"--size {text!r}: expected HxW, e.g. 512x1024")
  height, width = (int(p) for p in parts)
  if min(height, width) <= 0 or height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
    raise argparse.ArgumentTypeError(
      f"--size {text!r}: both sides must be positive multiples of {SIZE_MULTIPLE} "
      "(torchvision pads to them, which would give it more pixels than ours)"
    )
  return height, width


def summarize(records: list[dict]) -> dict[str, dict[str, dict]]:
  """Pools the workers' records per contender and mode.

  Args:
    records: worker results, each {'contender', 'mode', 'steps_s': [seconds of each timed
      step], 'first_s': seconds of the first call, 'flops': XLA's count per step or None}.

  Returns:
    {contender: {mode: {'median_s', 'min_s', 'max_s', 'steps', 'rounds', 'first_s' (median
    over rounds), 'flops', 'gflops_per_s' (None without flops)}}}.
  """
  pooled: dict[str, dict[str, list[dict]]] = {}
  for record in records:
    pooled.setdefault(record["contender"], {}).setdefault(record["mode"], []).append(record)
  summary: dict[str, dict[str, dict]] = {}
  for contender, modes in pooled.items():
    for mode, runs in modes.items():
      steps = [s for run in runs for s in run["steps_s"]]
      median = statistics.median(steps)
      flops = next((run["flops"] for run in runs if run.get("flops")), None)
      summary.setdefault(contender, {})[mode] = {
        "median_s": median,
        "min_s": min(steps),
        "max_s": max(steps),
        "steps": len(steps),
        "rounds": len(runs),
        "first_s": statistics.median(run["first_s"] for run in runs),
        "flops": flops,
        "gflops_per_s": flops / median / GIGA if flops and median > 0 else None,
      }
  return summary


def ratio(summary: dict, contender: str, mode: str, reference: str = REFERENCE) -> float | None:
  """A contender's median time over the reference's, None when either is missing.

  Args:
    summary: the output of `summarize`.
    contender: the contender's name.
    mode: 'train' or 'infer'.
    reference: the contender in the denominator.

  Returns:
    median(contender) / median(reference): above 1 is slower than the reference.
  """
  mine = summary.get(contender, {}).get(mode)
  theirs = summary.get(reference, {}).get(mode)
  if not mine or not theirs or theirs["median_s"] <= 0:
    return None
  return mine["median_s"] / theirs["median_s"]


def _cell(value: float | None, fmt: str) -> str:
  """`value` formatted, or '-' when it is missing."""
  return "-" if value is None else format(value, fmt)


def format_table(
  summary: dict, contenders: list[str], modes: list[str], reference: str = REFERENCE
) -> str:
  """The markdown table of the medians, the ratios to the reference and XLA's GFLOP/s.

  Args:
    summary: the output of `summarize`.
    contenders: rows, in this order.
    modes: the measured modes ('train' and/or 'infer'); a mode not measured shows '-'.
    reference: the contender of the ratio columns.

  Returns:
    The table, one line per contender, without a trailing newline.
  """
  header = ["contender"]
  for mode in MODES:
    label = "train step" if mode == "train" else "inference"
    header += [f"{label} median s", f"x {reference}", f"{label} GFLOP (XLA)", "GFLOP/s"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for contender in contenders:
    row = [contender]
    for mode in MODES:
      stats = summary.get(contender, {}).get(mode) if mode in modes else None
      stats = stats or {}
      flops = stats.get("flops")
      row += [
        _cell(stats.get("median_s"), ".3f"),
        _cell(ratio(summary, contender, mode, reference) if stats else None, ".2f"),
        _cell(flops / GIGA if flops else None, ".1f"),
        _cell(stats.get("gflops_per_s"), ".1f"),
      ]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def _version(package: str) -> str:
  """The installed version of a distribution, or 'not installed' (without importing it)."""
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return "not installed"


def cpu_model() -> str:
  """/proc/cpuinfo's first "model name", or the platform's processor string elsewhere."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  import platform

  return platform.processor() or "unknown"


def missing_torch() -> str | None:
  """None when torch and torchvision can be imported, else the message to exit with."""
  missing = [p for p in ("torch", "torchvision") if importlib.util.find_spec(p) is None]
  if not missing:
    return None
  return (
    f"bench_vs_torchvision: {' and '.join(missing)} not installed, which the torchvision "
    f"contender needs; install with `{INSTALL_HINT}` (or leave it out: --contenders "
    f"{OURS_DET} {OURS_SEGRPN})."
  )


# ---------------------------------------------------------------------------------------------
# Workers: each runs in its own process and prints one RESULT_PREFIX + JSON line.


def _our_config(contender: str, size: tuple[int, int], batch_size: int, dtype: str = "float32"):
  """The config of one of our contenders with random weights at `size`.

  Args:
    contender: OURS_DET or OURS_SEGRPN (TORCHVISION reads its settings from OURS_DET's).
    size: (height, width) of the images.
    batch_size: images per step.
    dtype: our compute dtype (config.model.dtype); torchvision's is its autocast.

  Returns:
    The ml_collections config.
  """
  from segrpn_jax import benchmark  # here, not at the top: importing the script loads no JAX

  if contender not in CONTENDERS:
    raise ValueError(f"unknown contender {contender!r}; one of {', '.join(CONTENDERS)}")
  # The bench scripts' shared paper-size config: det = baseline without the semantic head (the
  # Faster R-CNN torchvision's model computes), segrpn = case1 with roi+rpn fusion.
  model = "segrpn" if contender == OURS_SEGRPN else "det"
  return benchmark.paper_config(model, size, batch_size, dtype)


def _compile_ours(args: argparse.Namespace) -> dict:
  """Compiles one of our contenders' programs without running it (--compile_only).

  With JAX's persistent compilation cache (JAX_COMPILATION_CACHE_DIR, set by the parent on a
  GPU), the timing worker of the same cell then loads the program instead of compiling it.

  Args:
    args: the worker's arguments (worker, mode, size, batch, dtype, seed).

  Returns:
    {'compile_s', 'flops'}.
  """
  import jax

  from segrpn_jax import benchmark

  config = _our_config(args.worker, args.size, args.batch[0], args.dtype[0])
  batch = jax.device_put(benchmark.random_batch(config, args.batch[0], args.seed))
  start = time.perf_counter()
  if args.mode == "train":
    step, state = benchmark.train_step_fn(config)
    compiled = step.lower(state, batch).compile()
  else:
    predict = benchmark.inference_fn(config)
    compiled = predict.func.lower(*predict.args, batch["image"], **predict.keywords).compile()
  return {"compile_s": time.perf_counter() - start, "flops": benchmark.xla_flops(compiled)}


def _run_ours(args: argparse.Namespace) -> dict:
  """Times one of our contenders.

  Args:
    args: the worker's arguments (worker, mode, size, batch, dtype, steps, warmup, seed).

  Returns:
    {'first_s', 'steps_s', 'flops', 'loss', 'cost_s'}: loss is the last train step's (None at
    inference), cost_s the seconds the FLOP count took.
  """
  import jax
  import numpy as np

  from segrpn_jax import benchmark

  config = _our_config(args.worker, args.size, args.batch[0], args.dtype[0])
  batch = jax.device_put(benchmark.random_batch(config, args.batch[0], args.seed))
  loss = None
  if args.mode == "train":
    step, state = benchmark.train_step_fn(config)
    carry = {"state": state}  # the step donates its state: always pass the newest

    def call():
      carry["state"], carry["metrics"] = step(carry["state"], batch)
      return carry["state"], carry["metrics"]

    first, warm = benchmark.time_calls(call, args.steps, args.warmup)
    # Compiled programs are cached: lowering again with the same shapes does not recompile.
    start = time.perf_counter()
    flops = benchmark.xla_flops(step.lower(carry["state"], batch).compile())
    loss = float(np.asarray(carry["metrics"]["loss"]))
  else:
    predict = benchmark.inference_fn(config)
    images = batch["image"]
    first, warm = benchmark.time_calls(lambda: predict(images), args.steps, args.warmup)
    # inference_fn returns functools.partial(api.predict, model, variables, fusion=...).
    start = time.perf_counter()
    try:
      lowered = predict.func.lower(*predict.args, images, **predict.keywords)
      flops = benchmark.xla_flops(lowered.compile())
    except AttributeError:  # not a partial of a jitted function any more: no count
      flops = None
  cost_s = time.perf_counter() - start  # ~0 unless the cache missed and it compiled again
  return {"first_s": first, "steps_s": warm, "flops": flops, "loss": loss, "cost_s": cost_s}


def _torchvision_model(config, torch, torchvision):
  """torchvision's Faster R-CNN ResNet-50-FPN with `config`'s settings (module docstring).

  Args:
    config: our detection config (`_our_config(TORCHVISION, ...)`).
    torch: the torch module.
    torchvision: the torchvision module.

  Returns:
    The FasterRCNN module, in training mode, random weights.
  """
  from torchvision.models.detection import FasterRCNN
  from torchvision.models.detection.anchor_utils import AnchorGenerator
  from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
  from torchvision.ops.misc import FrozenBatchNorm2d

  m = config.model
  resnet_stages = 5  # stem, layer1..layer4
  if m.backbone != "resnet50" or m.norm != "frozen_bn" or not 0 <= m.freeze_at <= resnet_stages:
    raise ValueError(
      "the torchvision contender is ResNet-50 with frozen BN and freeze_at 0..5, got "
      f"{m.backbone}, {m.norm}, freeze_at={m.freeze_at}"
    )
  backbone = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
  # ResNet's 5 stages minus the freeze_at frozen ones train (freeze_at 2: layer2..layer4).
  backbone = _resnet_fpn_extractor(backbone, trainable_layers=resnet_stages - m.freeze_at)
  anchors = AnchorGenerator(
    sizes=tuple((s,) for s in m.anchor.sizes),
    aspect_ratios=(tuple(m.anchor.aspect_ratios),) * len(m.anchor.sizes),
  )
  height, width = config.data.image_size
  rpn_low, rpn_high = m.rpn.iou_thresholds
  return FasterRCNN(
    backbone,
    num_classes=m.num_classes + 1,  # + background
    min_size=min(height, width),  # the transform's resize factor is 1: no resizing
    max_size=max(height, width),
    image_mean=[0.0, 0.0, 0.0],  # the batch is normalised already (batch contract)
    image_std=[1.0, 1.0, 1.0],
    rpn_anchor_generator=anchors,
    rpn_pre_nms_top_n_train=m.rpn.pre_nms_topk_train,
    rpn_pre_nms_top_n_test=m.rpn.pre_nms_topk_test,
    rpn_post_nms_top_n_train=m.rpn.post_nms_topk_train,
    rpn_post_nms_top_n_test=m.rpn.post_nms_topk_test,
    rpn_nms_thresh=m.rpn.nms_threshold,
    rpn_fg_iou_thresh=rpn_high,
    rpn_bg_iou_thresh=rpn_low,
    rpn_batch_size_per_image=m.rpn.batch_size_per_image,
    rpn_positive_fraction=m.rpn.positive_fraction,
    box_score_thresh=m.roi.score_threshold,
    box_nms_thresh=m.roi.nms_threshold,
    box_detections_per_img=m.roi.detections_per_image,
    box_fg_iou_thresh=m.roi.fg_iou_threshold,
    box_bg_iou_thresh=m.roi.fg_iou_threshold,  # below foreground is background, as ours
    box_batch_size_per_image=m.roi.batch_size_per_image,
    box_positive_fraction=m.roi.positive_fraction,
    bbox_reg_weights=tuple(m.roi.box_weights),
  )


def _run_torchvision(args: argparse.Namespace) -> dict:
  """Times torchvision's Faster R-CNN on the batch our contenders get.

  On a GPU the model and the batch live on `cuda`, every timed call ends with
  torch.cuda.synchronize(), and bfloat16 is torch.autocast(dtype=torch.bfloat16) around the
  forward (and the losses), the way torch code runs in bfloat16; the weights and the optimizer
  stay float32, as ours do (config.model.dtype is the compute dtype only).

  Args:
    args: the worker's arguments (mode, size, batch, dtype, device, steps, warmup, seed).

  Returns:
    {'first_s', 'steps_s', 'flops' (None), 'loss'} as `_run_ours`.
  """
  message = missing_torch()
  if message:
    raise SystemExit(message)
  import torch
  import torchvision

  from segrpn_jax import benchmark

  torch.set_flush_denormal(True)  # XLA flushes denormals; without this torch is 2-3x slower
  torch.set_num_threads(args.torch_threads)
  torch.manual_seed(args.seed)
  device = torch.device("cuda" if args.device == "gpu" else "cpu")
  if device.type == "cuda" and not torch.cuda.is_available():
    raise SystemExit(
      f"bench_vs_torchvision: torch {torch.__version__} sees no CUDA device; install a CUDA "
      "build of torch (pip install torch torchvision from PyPI on Linux is one)."
    )
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  if device.type == "cuda":
    # XLA's GPU defaults, given to torch: float32 matmuls and convolutions on TF32 tensor cores
    # (torch's cudnn convolutions already are, its matmuls not), and kernels picked by timing
    # them on these shapes (XLA autotunes when it compiles; cudnn.benchmark, in the warm-up).
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
  autocast = torch.autocast(
    device_type=device.type, dtype=torch.bfloat16, enabled=args.dtype[0] == "bfloat16"
  )
  batch_size = args.batch[0]
  config = _our_config(TORCHVISION, args.size, batch_size)
  batch = benchmark.random_batch(config, batch_size, args.seed)
  model = _torchvision_model(config, torch, torchvision).to(device)
  # NHWC float32 -> a list of CHW tensors; the valid boxes (xyxy pixels) and classes 1..8.
  images = [
    torch.from_numpy(image).permute(2, 0, 1).contiguous().to(device) for image in batch["image"]
  ]
  targets = [
    {
      "boxes": torch.from_numpy(boxes[valid]).to(device),
      "labels": torch.from_numpy(classes[valid]).long().to(device),
    }
    for boxes, classes, valid in zip(batch["boxes"], batch["classes"], batch["valid"], strict=True)
  ]
  loss = None
  if args.mode == "train":
    model.train()
    t = config.train
    optimizer = torch.optim.SGD(
      [p for p in model.parameters() if p.requires_grad],
      lr=t.base_lr,
      momentum=t.momentum,
      weight_decay=t.weight_decay,
    )

    def call():
      with autocast:
        losses = model(images, targets)
        total = sum(losses.values())
      optimizer.zero_grad(set_to_none=True)
      total.backward()
      optimizer.step()
      sync()
      return total.detach()

  else:
    model.eval()

    def call():
      with torch.inference_mode(), autocast:
        out = model(images)
      sync()
      return out

  # torch on CPU is synchronous; on a GPU each call ends with sync(): its outputs are ready.
  start = time.perf_counter()
  out = call()
  first = time.perf_counter() - start
  for _ in range(args.warmup - 1):
    out = call()
  warm = []
  for _ in range(args.steps):
    start = time.perf_counter()
    out = call()
    warm.append(time.perf_counter() - start)
  if args.mode == "train":
    loss = float(out)
  return {"first_s": first, "steps_s": warm, "flops": None, "loss": loss}


def worker(args: argparse.Namespace) -> None:
  """Runs each cell (dtype, mode) of args.dtype x args.modes for one contender and batch size,
  and prints a RESULT_PREFIX + JSON line after each.

  A cell that would start after args.stop_at (a time.time()) is left out: the parent reports it
  as skipped. A cell that fails prints its traceback and a record with an 'error' instead.

  Args:
    args: the parsed arguments, with args.worker the contender and one --batch.
  """
  if args.compile_only:
    run = _compile_ours
  else:
    run = _run_torchvision if args.worker == TORCHVISION else _run_ours
  for dtype in args.dtype:
    for mode in args.modes:
      if args.stop_at and time.time() > args.stop_at:
        return
      cell = argparse.Namespace(**{**vars(args), "mode": mode, "dtype": [dtype]})
      try:
        result = run(cell)
      except Exception as e:  # e.g. out of memory at batch 8: the worker's other cells still run
        traceback.print_exc()
        result = {"error": f"{type(e).__name__}: {e}"[-ERROR_CHARS:]}
      result.update(
        contender=args.worker,
        mode=mode,
        batch=args.batch[0],
        dtype=dtype,
        device=args.device,
        threads=args.torch_threads if args.worker == TORCHVISION else os.cpu_count(),
        load_average=os.getloadavg()[0],
      )
      print(RESULT_PREFIX + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# Parent: runs the workers and prints the tables.


class WorkerFailed(Exception):
  """A worker exited with an error or printed no result."""


def worker_command(
  args: argparse.Namespace,
  contender: str,
  modes: list[str],
  batch: int,
  dtypes: list[str],
  compile_only: bool = False,
  stop_at: float | None = None,
) -> list[str]:
  """The command line that runs this script as the worker of the cells modes x dtypes."""
  height, width = args.size
  command = [
    sys.executable,
    os.path.abspath(__file__),
    "--worker",
    contender,
    "--modes",
    *modes,
    "--dtype",
    *dtypes,
    f"--size={height}x{width}",
    f"--batch={batch}",
    f"--device={args.device}",
    f"--steps={args.steps}",
    f"--warmup={args.warmup}",
    f"--seed={args.seed}",
    f"--torch_threads={args.torch_threads}",
  ]
  if stop_at is not None:
    command.append(f"--stop_at={stop_at}")
  return [*command, "--compile_only"] if compile_only else command


def worker_env(
  args: argparse.Namespace, compile_only: bool = False, contender: str | None = None
) -> dict:
  """The workers' environment: the clone's package first; on a GPU, JAX on CUDA only (an error,
  not a silent CPU run, when it has no GPU) and one persistent compilation cache for the run.
  The torchvision worker imports JAX only for the config and the NumPy batch: its JAX stays on
  the CPU, so that it can never take the GPU memory torch needs."""
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
  if args.device == "gpu":
    env["JAX_PLATFORMS"] = "cuda"
    env["JAX_COMPILATION_CACHE_DIR"] = args.cache_dir
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"
    if compile_only:  # several compile at once: none may take 75 % of the GPU's memory
      env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    if contender == TORCHVISION:
      env["JAX_PLATFORMS"] = "cpu"
  return env


def parse_worker_output(returncode: int | None, stdout: str, stderr: str, what: str) -> list[dict]:
  """The worker's JSON records (one per cell it ran; a failed cell's holds an 'error').

  Args:
    returncode: the worker's exit status; None when it was stopped for time, which keeps the
      records of the cells it finished (none is no error then).
    stdout: its standard output.
    stderr: its standard error, whose end goes into the error.
    what: the worker, for the error.

  Raises:
    WorkerFailed: with the end of its stderr, when it printed no result.
  """
  lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
  if not lines and returncode is not None:
    tail = "\n".join(stderr.strip().splitlines()[-STDERR_TAIL_LINES:])
    raise WorkerFailed(
      f"bench_vs_torchvision: the {what} worker failed (exit code {returncode}); the end of "
      f"its output:\n{tail or stdout[-2000:]}"
    )
  return [json.loads(line[len(RESULT_PREFIX) :]) for line in lines]


def run_worker(
  args: argparse.Namespace,
  contender: str,
  modes: list[str] | None = None,
  batch: int | None = None,
  dtypes: list[str] | None = None,
  deadline: float | None = None,
) -> list[dict]:
  """Runs this script as the worker of one contender and batch size for modes x dtypes.

  Args:
    args: the parent's arguments.
    contender: the contender's name.
    modes: 'train' and/or 'infer' (None: args.modes).
    batch: images per step (None: the first of --batch).
    dtypes: float32 and/or bfloat16 (None: args.dtype).
    deadline: a time.monotonic() at which the worker is stopped (None: no limit); it starts no
      cell after it, and the records of the cells it finished are kept.

  Returns:
    The worker's JSON records, one per cell it ran.

  Raises:
    WorkerFailed: when the worker fails or prints no result.
  """
  modes = args.modes if modes is None else modes
  batch = args.batch[0] if batch is None else batch
  dtypes = args.dtype if dtypes is None else dtypes
  what = f"{contender} {'/'.join(modes)} batch {batch} {'/'.join(dtypes)}"
  timeout_s = stop_at = None
  if deadline is not None:
    timeout_s = max(1.0, deadline - time.monotonic())
    stop_at = time.time() + timeout_s - CELL_GUESS_S
  command = worker_command(args, contender, modes, batch, dtypes, stop_at=stop_at)
  try:
    proc = subprocess.run(
      command,
      capture_output=True,
      text=True,
      env=worker_env(args, contender=contender),
      timeout=timeout_s,
    )
    returncode, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
  except subprocess.TimeoutExpired as e:
    returncode, stdout, stderr = None, _text(e.stdout), _text(e.stderr)
  return parse_worker_output(returncode, stdout, stderr, what)


def _text(output: str | bytes | None) -> str:
  return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def precompile(args: argparse.Namespace, cells: list[tuple], deadline: float) -> list[dict]:
  """Compiles our contenders' programs, `args.compile_jobs` processes at a time (GPU only).

  They fill the run's persistent compilation cache, so that each timing worker loads its
  programs instead of compiling them. XLA compiles on the CPU, mostly one thread per program;
  its autotuning runs candidate kernels on the GPU, so concurrent compilations autotune on a
  shared GPU (our choice: the 16 programs of the full comparison take many minutes one by one).

  Args:
    args: the parent's arguments.
    cells: (contender, mode, batch, dtype) of our contenders.
    deadline: time.monotonic() after which nothing more is started and running ones stop.

  Returns:
    One record per started cell: {'contender', 'mode', 'batch', 'dtype', 'compile_s',
    'flops'}, or {..., 'error'}.
  """
  pending, running, records = list(cells), [], []
  while pending or running:
    while pending and len(running) < args.compile_jobs and time.monotonic() < deadline:
      contender, mode, batch, dtype = cell = pending.pop(0)
      # Files, not pipes: a full pipe would stall a compilation while another is waited on.
      out = tempfile.TemporaryFile("w+")  # noqa: SIM115  (closed when the process is done)
      err = tempfile.TemporaryFile("w+")  # noqa: SIM115
      command = worker_command(args, contender, [mode], batch, [dtype], compile_only=True)
      proc = subprocess.Popen(
        command, stdout=out, stderr=err, text=True, env=worker_env(args, compile_only=True)
      )
      running.append((cell, proc, out, err))
    if not running:
      break
    time.sleep(POLL_S)
    for entry in list(running):
      cell, proc, out, err = entry
      if proc.poll() is None:
        if time.monotonic() < deadline:
          continue
        proc.kill()
        proc.wait()
      running.remove(entry)
      out.seek(0), err.seek(0)
      stdout, stderr = out.read(), err.read()
      out.close(), err.close()
      contender, mode, batch, dtype = cell
      base = {"contender": contender, "mode": mode, "batch": batch, "dtype": dtype}
      try:
        returncode = proc.returncode if proc.returncode is not None else -9
        record = parse_worker_output(returncode, stdout, stderr, f"{cell} compile")[0]
        if "error" in record:
          records.append({**base, "error": record["error"]})
        else:
          records.append({**base, "compile_s": record["compile_s"], "flops": record["flops"]})
      except (WorkerFailed, IndexError) as e:  # IndexError: stopped for time, no record
        records.append({**base, "error": str(e) or "stopped at the deadline"})
      seconds = records[-1].get("compile_s", float("nan"))
      print(
        f"[compile] {contender} {mode} batch {batch} {dtype}: {seconds:.0f} s",
        file=sys.stderr,
        flush=True,
      )
  return records


def read_quickstart(workdir: str) -> dict:
  """What a finished quick start left in `workdir`.

  Returns:
    {'metrics_step': the last step with a metrics_<step>.json (None: none), 'metrics': its
    contents, 'checkpoint_steps': the steps saved under checkpoints/, sorted}.
  """
  steps = []
  for name in os.listdir(workdir) if os.path.isdir(workdir) else []:
    stem, ext = os.path.splitext(name)
    if name.startswith("metrics_") and ext == ".json" and stem[len("metrics_") :].isdigit():
      steps.append(int(stem[len("metrics_") :]))
  metrics = None
  if steps:
    with open(os.path.join(workdir, f"metrics_{max(steps)}.json")) as f:
      metrics = json.load(f)
  checkpoints = os.path.join(workdir, "checkpoints")
  saved = (
    sorted(int(n) for n in os.listdir(checkpoints) if n.isdigit())
    if os.path.isdir(checkpoints)
    else []
  )
  return {
    "metrics_step": max(steps) if steps else None,
    "metrics": metrics,
    "checkpoint_steps": saved,
  }


def readme_quickstart(readme: str) -> tuple[str, ...]:
  """The quick start's arguments after `python`, read from the README's first code block.

  Args:
    readme: the README's text.

  Returns:
    e.g. ('-m', 'segrpn_jax.main', '--config=configs/case1.py:synthetic'): the first
    `python -m segrpn_jax.main` command there (after any `pip install ... &&`), its --workdir
    left out; QUICKSTART when there is none.
  """
  blocks = re.findall(r"^```[^\n]*\n(.*?)^```", readme, flags=re.M | re.S)
  for line in blocks[0].splitlines() if blocks else []:
    for command in line.split("&&"):
      words = shlex.split(command, comments=True)
      if words[:3] in (["python", "-m", "segrpn_jax.main"], ["python3", "-m", "segrpn_jax.main"]):
        return tuple(w for w in words[1:] if not w.startswith("--workdir"))
  return QUICKSTART


def run_quickstart(args: argparse.Namespace, workdir: str, timeout_s: float) -> dict:
  """The README's quick start on the GPU: data, compile, train, evaluate, save.

  Returns:
    read_quickstart's dict plus {'command', 'wall_s', 'returncode' (None when stopped at
    timeout_s), 'finished': it exited 0 with final metrics and a checkpoint, 'stderr_tail'}.
  """
  with open(os.path.join(ROOT, "README.md")) as f:
    quickstart = readme_quickstart(f.read())
  command = [sys.executable, *quickstart, f"--workdir={workdir}"]
  env = worker_env(args)
  env.pop("JAX_COMPILATION_CACHE_DIR")  # the quick start as a user runs it: a cold compile
  start = time.perf_counter()
  try:
    proc = subprocess.run(
      command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s
    )
    returncode, stderr = proc.returncode, proc.stderr
  except subprocess.TimeoutExpired as e:
    returncode = None
    stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr or ""
  wall_s = time.perf_counter() - start
  result = read_quickstart(workdir)
  result.update(
    command=shlex.join(["python", *quickstart, f"--workdir={workdir}"]),
    wall_s=wall_s,
    returncode=returncode,
    finished=returncode == 0 and result["metrics"] is not None and bool(result["checkpoint_steps"]),
    stderr_tail="\n".join(stderr.strip().splitlines()[-STDERR_TAIL_LINES:]),
  )
  return result


def _pip(arguments: list[str]) -> tuple[bool, str]:
  """pip install ARGUMENTS in the repository root: (succeeded, the end of its output)."""
  # Few retries and a time limit: without a network pip would retry for minutes of the budget.
  command = [sys.executable, "-m", "pip", "install", "-q", "--retries=1", "--timeout=15"]
  try:
    proc = subprocess.run(
      [*command, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=PIP_TIMEOUT_S
    )
  except subprocess.TimeoutExpired:
    return False, f"pip install {' '.join(arguments)} did not finish in {PIP_TIMEOUT_S:.0f} s"
  return proc.returncode == 0, (proc.stdout + proc.stderr).strip()[-2000:]


def _probe(code: str) -> str:
  """The stripped stdout of `python -c code` (with the clone's package), '' when it fails."""
  env = dict(
    os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
  )
  env.pop("JAX_PLATFORMS", None)
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
  return proc.stdout.strip() if proc.returncode == 0 else ""


def prepare_gpu(args: argparse.Namespace) -> list[str]:
  """Installs what the GPU comparison needs, where missing, and says what it did.

  JAX without a GPU backend: `pip install -e '.[cuda]'` (jax[cuda12] of pyproject.toml), and
  without it working the script stops. torch/torchvision missing or without CUDA:
  `pip install -e '.[bench]'`; without them working the torchvision contender is left out
  (and said so) rather than the whole run.

  Returns:
    Lines for the report; args.contenders loses TORCHVISION when it cannot run.
  """
  notes = []
  backend = "import jax; print(jax.default_backend())"
  if _probe(backend) != "gpu":
    if args.skip_install:
      raise SystemExit(f"bench_vs_torchvision: JAX sees no GPU; install `{CUDA_INSTALL_HINT}`.")
    ok, output = _pip(["-e", ".[cuda]"])
    notes.append(f"installed: {CUDA_INSTALL_HINT} ({'ok' if ok else 'failed'})")
    if _probe(backend) != "gpu":
      raise SystemExit(
        f"bench_vs_torchvision: JAX sees no GPU, also after `{CUDA_INSTALL_HINT}`:\n{output}"
      )
  if TORCHVISION in args.contenders:
    torch_gpu = "import torch, torchvision; print(torch.cuda.is_available())"
    if _probe(torch_gpu) != "True" and not args.skip_install:
      ok, output = _pip(["-e", ".[bench]"])
      notes.append(f"installed: {INSTALL_HINT} ({'ok' if ok else 'failed: ' + output[-300:]})")
      importlib.invalidate_caches()
    if _probe(torch_gpu) != "True":
      args.contenders = [c for c in args.contenders if c != TORCHVISION]
      notes.append(
        "torchvision left out: torch and torchvision with CUDA could not be imported "
        f"(install them with `{INSTALL_HINT}`, a CUDA build of torch)"
      )
  return notes


def gpu_model() -> str:
  """nvidia-smi's name, memory and driver of the first GPU, or 'unknown'."""
  try:
    proc = subprocess.run(
      ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
      capture_output=True,
      text=True,
      check=True,
    )
    return proc.stdout.strip().splitlines()[0]
  except (OSError, subprocess.CalledProcessError, IndexError):
    return "unknown"


def cells_in_order(args: argparse.Namespace) -> list[tuple[int, str, str, str]]:
  """(batch, dtype, mode, contender) of every timing worker of one round, in the order run:
  batch by batch, dtype by dtype as given (the most wanted first: the paper's batch 1, float32),
  so that a run cut short by --budget_s has measured those."""
  return [
    (batch, dtype, mode, contender)
    for batch in args.batch
    for dtype in args.dtype
    for mode in args.modes
    for contender in args.contenders
  ]


def worker_plan(args: argparse.Namespace) -> list[tuple[int, tuple[str, list, int, list]]]:
  """(round, (contender, modes, batch, dtypes)) of every timing worker, in the order run.

  On a CPU one worker per cell, the contenders alternating within each round, so that a slow
  spell of the machine hits all of them. On a GPU one worker per contender and batch size runs
  all its dtypes and modes: a worker's start (imports, CUDA context, loading the compiled
  programs) costs seconds that 24 workers could not afford in the budget; batch 1 comes first.
  """
  if args.device == "gpu":
    return [
      (k, (c, list(args.modes), b, list(args.dtype)))
      for k in range(args.rounds)
      for b in args.batch
      for c in args.contenders
    ]
  return [
    (k, (c, [m], b, [d]))
    for b in args.batch
    for d in args.dtype
    for m in args.modes
    for k in range(args.rounds)
    for c in args.contenders
  ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """The command line (module docstring), with the defaults of --device filled in.

  Args:
    argv: arguments without the program name; None = sys.argv[1:].

  Returns:
    The parsed namespace.
  """
  parser = argparse.ArgumentParser(
    description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--device", choices=DEVICES, default="cpu", help="where every contender runs")
  parser.add_argument("--size", type=parse_size, default=(512, 1024), help="HxW (512x1024)")
  parser.add_argument("--batch", type=int, nargs="+", help="images per step (cpu: 1; gpu: 1 8)")
  parser.add_argument(
    "--dtype",
    nargs="+",
    choices=DTYPES,
    help="compute dtype: ours config.model.dtype, torchvision autocast "
    "(cpu: float32; gpu: float32 bfloat16)",
  )
  parser.add_argument("--steps", type=int, help="timed steps per worker (cpu: 6; gpu: 10)")
  parser.add_argument(
    "--warmup", type=int, help="untimed calls per worker, the first compiles (cpu: 2; gpu: 3)"
  )
  parser.add_argument("--rounds", type=int, help="workers per cell (cpu: 2; gpu: 1)")
  parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
  parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
  parser.add_argument("--seed", type=int, default=0, help="of the random batch and weights")
  parser.add_argument(
    "--torch_threads",
    type=int,
    default=os.cpu_count(),
    help="torch.set_num_threads of the torchvision worker (default: every core, as XLA)",
  )
  parser.add_argument(
    "--budget_s",
    type=float,
    help="stop starting workers after this many seconds of the whole script "
    f"(cpu: none; gpu: {GPU_BUDGET_S:.0f})",
  )
  parser.add_argument(
    "--compile_jobs",
    type=int,
    default=8,
    help="gpu: our programs compiled this many at a time (0: none)",
  )
  parser.add_argument(
    "--quickstart_timeout_s",
    type=float,
    default=QUICKSTART_TIMEOUT_S,
    help="gpu: the quick start is stopped after this many seconds",
  )
  parser.add_argument("--skip_quickstart", action="store_true", help="gpu: no quick start run")
  parser.add_argument("--skip_install", action="store_true", help="gpu: install nothing")
  parser.add_argument("--json", metavar="OUT", help="also write the results to this file")
  parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
  parser.add_argument("--compile_only", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--stop_at", type=float, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  for name, (cpu, gpu) in DEVICE_DEFAULTS.items():
    if getattr(args, name) is None:
      setattr(args, name, gpu if args.device == "gpu" else cpu)
  for name in ("steps", "warmup", "rounds", "torch_threads"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be at least 1")
  if min(args.batch) < 1:
    parser.error("--batch must be at least 1")
  if args.compile_jobs < 0:
    parser.error("--compile_jobs must be at least 0")
  if args.worker and len(args.batch) != 1:
    parser.error("--worker takes one --batch")
  return args


def main(argv: list[str] | None = None) -> None:
  """Runs every worker, prints the tables and optionally writes --json.

  Args:
    argv: arguments without the program name; None = sys.argv[1:].
  """
  args = parse_args(argv)
  if args.worker:
    worker(args)
    return
  started = time.monotonic()
  deadline = started + (args.budget_s if args.budget_s else float("inf"))
  gpu = args.device == "gpu"
  notes, quickstart, compiled = [], None, []
  if gpu:
    notes = prepare_gpu(args)
  elif TORCHVISION in args.contenders and (message := missing_torch()):
    raise SystemExit(message)
  # A GPU run's compilation cache and quick-start workdir (kept: the run's files to look at).
  scratch = tempfile.mkdtemp(prefix="bench_vs_torchvision_") if gpu else None
  args.cache_dir = os.path.join(scratch, "jax_cache") if gpu else None
  if gpu and not args.skip_quickstart:
    # What is left after the quick start must hold at least one round of batch 1.
    timeout_s = min(args.quickstart_timeout_s, deadline - time.monotonic() - QUICKSTART_RESERVE_S)
    quickstart = run_quickstart(args, os.path.join(scratch, "quickstart"), max(timeout_s, 1.0))
    print(
      f"[quick start] {'finished' if quickstart['finished'] else 'NOT finished'} in "
      f"{quickstart['wall_s']:.0f} s",
      file=sys.stderr,
      flush=True,
    )
  if gpu and args.compile_jobs:
    ours = [c for c in args.contenders if c != TORCHVISION]
    cells = [(c, m, b, d) for b, d, m, c in cells_in_order(args) if c in ours]
    compiled = precompile(args, cells, deadline)

  load_start = os.getloadavg()[0]
  records, failed = [], []
  done = set()  # (round, batch, dtype, mode, contender) measured or failed: not skipped
  durations: dict[str, float] = {}  # the longest worker of each contender so far
  for round_index, (contender, modes, batch, dtypes) in worker_plan(args):
    what = f"{contender} {'/'.join(modes)} batch {batch} {'/'.join(dtypes)}"
    if durations.get(contender, WORKER_GUESS_S) > deadline - time.monotonic():
      continue  # reported as skipped below
    start = time.perf_counter()
    try:
      got = run_worker(args, contender, modes, batch, dtypes, deadline if gpu else None)
    except WorkerFailed as e:
      if not gpu:
        raise SystemExit(str(e)) from e
      failed.append(f"{what} round {round_index + 1}: {e}")
      done.update((round_index, batch, d, m, contender) for d in dtypes for m in modes)
      print(f"[{what}] failed", file=sys.stderr, flush=True)
      continue
    seconds = time.perf_counter() - start
    durations[contender] = max(durations.get(contender, 0.0), seconds)
    for record in got:
      done.add((round_index, batch, record["dtype"], record["mode"], contender))
      if "error" in record:
        cell = f"{contender} {record['mode']} batch {batch} {record['dtype']}"
        if not gpu:
          raise SystemExit(f"bench_vs_torchvision: the {cell} worker failed: {record['error']}")
        failed.append(f"{cell} round {round_index + 1}: {record['error']}")
        print(f"[{cell}] failed: {record['error']}", file=sys.stderr, flush=True)
        continue
      record["round"] = round_index
      records.append(record)
      print(
        f"[{contender} {record['mode']} batch {batch} {record['dtype']} round "
        f"{round_index + 1}/{args.rounds}] median {statistics.median(record['steps_s']):.3f} s, "
        f"first call {record['first_s']:.1f} s, load average {record['load_average']:.2f}",
        file=sys.stderr,
        flush=True,
      )
    print(f"[{what}] worker {seconds:.0f} s", file=sys.stderr, flush=True)
  skipped = [
    f"{c} {m} batch {b} {d} round {k + 1}"
    for k in range(args.rounds)
    for b, d, m, c in cells_in_order(args)
    if (k, b, d, m, c) not in done
  ]
  load_end = os.getloadavg()[0]

  height, width = args.size
  worker_loads = [r["load_average"] for r in records] or [load_end]
  environment = {
    "device": gpu_model() if gpu else "cpu",
    "cpu_model": cpu_model(),
    "cores": os.cpu_count(),
    "load_average_start": load_start,
    "load_average_end": load_end,
    "load_average_workers": worker_loads,
    "versions": {p: _version(p) for p in VERSIONED},
  }
  versions = ", ".join(f"{p} {v}" for p, v in environment["versions"].items())
  summaries = {}
  print(
    f"\n{height}x{width} on {args.device}, {args.steps} timed steps x {args.rounds} rounds per "
    f"cell (median over all); ratio = time / {REFERENCE}'s time"
  )
  for batch in args.batch:
    for dtype in args.dtype:
      group = [r for r in records if r["batch"] == batch and r["dtype"] == dtype]
      if not group:
        continue
      summary = summarize(group)
      summaries[f"batch{batch}_{dtype}"] = summary
      print(f"\nbatch {batch}, {dtype}\n")
      print(format_table(summary, args.contenders, args.modes))
  if compiled:
    print(
      "\nour programs' compile time (concurrent, --compile_jobs "
      f"{args.compile_jobs}): "
      + ", ".join(
        f"{c['contender']} {c['mode']} b{c['batch']} {c['dtype']} "
        + (f"{c['compile_s']:.0f} s" if "compile_s" in c else "failed")
        for c in compiled
      )
    )
  if gpu:
    print(
      f"\nGPU: {environment['device']}; CPU: {environment['cpu_model']}, "
      f"{environment['cores']} cores\n{versions}"
    )
  else:
    print(
      f"\nCPU: {environment['cpu_model']}, {environment['cores']} cores (torch threads "
      f"{args.torch_threads}); load average (1 min) {load_start:.2f} at start, {load_end:.2f} "
      f"at end, {min(worker_loads):.2f}..{max(worker_loads):.2f} at the workers' ends\n{versions}"
    )
    if load_start > BUSY_LOAD:
      print(
        f"warning: the machine was busy (load average {load_start:.2f} before the first "
        "worker); other processes slow torch's OpenMP more than XLA's thread pool, so the "
        "ratios favour ours more than on an idle machine (see --torch_threads)"
      )
  losses = {
    f"{r['contender']} b{r['batch']} {r['dtype']}": r["loss"]
    for r in records
    if r["mode"] == "train" and r["loss"] is not None
  }
  if losses:
    print("last train loss: " + ", ".join(f"{c} {v:.4g}" for c, v in losses.items()))
  if quickstart:
    metrics = quickstart["metrics"] or {}
    shown = {k: v for k, v in metrics.items() if k in QUICKSTART_METRICS}
    print(
      f"\nquick start on the GPU ({quickstart['command']}): "
      f"{'finished' if quickstart['finished'] else 'NOT finished'}, wall time "
      f"{quickstart['wall_s']:.0f} s (dataset build, compilation, training, evaluation), "
      f"exit code {quickstart['returncode']}, checkpoints at steps {quickstart['checkpoint_steps']}"
      f", metrics at step {quickstart['metrics_step']}: "
      + ", ".join(f"{k} {v:.3f}" for k, v in shown.items())
    )
    if not quickstart["finished"]:
      print(quickstart["stderr_tail"])
  for line in notes:
    print(line)
  for cell in skipped:
    print(f"skipped (--budget_s {args.budget_s or 0:.0f} s reached): {cell}")
  for line in failed:
    print(f"failed: {line}")
  print(f"total wall time {time.monotonic() - started:.0f} s")
  if args.json:
    excluded = ("worker", "mode", "json", "compile_only", "cache_dir")
    settings = {k: v for k, v in vars(args).items() if k not in excluded}
    with open(args.json, "w") as f:
      json.dump(
        {
          "settings": settings,
          "environment": environment,
          "summaries": summaries,
          "runs": records,
          "compiled": compiled,
          "quickstart": quickstart,
          "notes": notes,
          "skipped": skipped,
          "failed": failed,
        },
        f,
        indent=2,
      )


if __name__ == "__main__":
  main()
