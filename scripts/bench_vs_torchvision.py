"""CPU step times of our models next to torchvision's Faster R-CNN ResNet-50-FPN on the same work.

  pip install -e '.[bench]'                       # torch and torchvision, for benchmarks only
  python scripts/bench_vs_torchvision.py          # 512x1024, batch 1, 6 steps x 2 rounds
  python scripts/bench_vs_torchvision.py --size 256x512 --steps 3 --rounds 1 --json bench.json
  python scripts/bench_vs_torchvision.py --modes infer --contenders torchvision ours-det

What it measures. For each mode (`train`: forward with targets, the summed losses, backward and
an SGD step with momentum 0.9 and weight decay 1e-4; `infer`: the inference forward with its
post-processing) and each contender, the wall time of one step on one random batch
(`segrpn_jax.benchmark.random_batch`: the same images, boxes and classes for every contender):

  torchvision  torchvision.models.detection.FasterRCNN on resnet50(weights=None,
               norm_layer=FrozenBatchNorm2d) through _resnet_fpn_extractor(trainable_layers=3)
  ours-det     configs/baseline.py with model.semantic_head = False: our Faster R-CNN
  ours-segrpn  configs/case1.py: SegRPN, class-agnostic module, RPN_mask, roi+rpn fusion
(`segrpn_jax.benchmark.paper_config`, the config every bench script measures.)

Every (contender, mode) runs in its own process (this script re-invoked with --worker), so that
no framework's threads, allocator or caches disturb another's. A worker makes `--warmup` calls
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
import statistics
import subprocess
import sys
import time

TORCHVISION = "torchvision"
OURS_DET = "ours-det"
OURS_SEGRPN = "ours-segrpn"
CONTENDERS = (TORCHVISION, OURS_DET, OURS_SEGRPN)
REFERENCE = TORCHVISION  # ratios are times over this contender's
MODES = ("train", "infer")
INSTALL_HINT = "pip install -e '.[bench]'"
RESULT_PREFIX = "BENCH_RESULT "  # marks the worker's JSON line among anything else on stdout
SIZE_MULTIPLE = 32  # torchvision pads images to multiples of 32 (GeneralizedRCNNTransform)
GIGA = 1e9
STDERR_TAIL_LINES = 30  # of a failed worker's stderr, shown by the parent
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


def _our_config(contender: str, size: tuple[int, int], batch_size: int):
  """The config of one of our contenders with random weights at `size`.

  Args:
    contender: OURS_DET or OURS_SEGRPN (TORCHVISION reads its settings from OURS_DET's).
    size: (height, width) of the images.
    batch_size: images per step.

  Returns:
    The ml_collections config.
  """
  from segrpn_jax import benchmark  # here, not at the top: importing the script loads no JAX

  if contender not in CONTENDERS:
    raise ValueError(f"unknown contender {contender!r}; one of {', '.join(CONTENDERS)}")
  # The bench scripts' shared paper-size config: det = baseline without the semantic head (the
  # Faster R-CNN torchvision's model computes), segrpn = case1 with roi+rpn fusion.
  model = "segrpn" if contender == OURS_SEGRPN else "det"
  return benchmark.paper_config(model, size, batch_size)


def _run_ours(args: argparse.Namespace) -> dict:
  """Times one of our contenders.

  Args:
    args: the worker's arguments (worker, mode, size, batch, steps, warmup, seed).

  Returns:
    {'first_s', 'steps_s', 'flops', 'loss', 'cost_s'}: loss is the last train step's (None at
    inference), cost_s the seconds the FLOP count took.
  """
  import jax
  import numpy as np

  from segrpn_jax import benchmark

  config = _our_config(args.worker, args.size, args.batch)
  batch = jax.device_put(benchmark.random_batch(config, args.batch, args.seed))
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

  Args:
    args: the worker's arguments (mode, size, batch, steps, warmup, seed).

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
  config = _our_config(TORCHVISION, args.size, args.batch)
  batch = benchmark.random_batch(config, args.batch, args.seed)
  model = _torchvision_model(config, torch, torchvision)
  # NHWC float32 -> a list of CHW tensors; the valid boxes (xyxy pixels) and classes 1..8.
  images = [torch.from_numpy(image).permute(2, 0, 1).contiguous() for image in batch["image"]]
  targets = [
    {
      "boxes": torch.from_numpy(boxes[valid]),
      "labels": torch.from_numpy(classes[valid]).long(),
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
      losses = model(images, targets)
      total = sum(losses.values())
      optimizer.zero_grad(set_to_none=True)
      total.backward()
      optimizer.step()
      return total.detach()

  else:
    model.eval()

    def call():
      with torch.inference_mode():
        return model(images)

  # torch on CPU is synchronous: a call's outputs are ready when it returns.
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
  """Runs one (contender, mode) and prints its RESULT_PREFIX + JSON line.

  Args:
    args: the parsed arguments, with args.worker the contender.
  """
  run = _run_torchvision if args.worker == TORCHVISION else _run_ours
  result = run(args)
  result.update(
    contender=args.worker,
    mode=args.mode,
    threads=args.torch_threads if args.worker == TORCHVISION else os.cpu_count(),
    load_average=os.getloadavg()[0],
  )
  print(RESULT_PREFIX + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# Parent: runs the workers and prints the table.


def run_worker(args: argparse.Namespace, contender: str, mode: str) -> dict:
  """Runs this script as a worker for one (contender, mode) and parses its result.

  Args:
    args: the parent's arguments.
    contender: the contender's name.
    mode: 'train' or 'infer'.

  Returns:
    The worker's JSON record.

  Raises:
    SystemExit: when the worker fails or prints no result (with its stderr's tail).
  """
  height, width = args.size
  command = [
    sys.executable,
    os.path.abspath(__file__),
    "--worker",
    contender,
    "--mode",
    mode,
    f"--size={height}x{width}",
    f"--batch={args.batch}",
    f"--steps={args.steps}",
    f"--warmup={args.warmup}",
    f"--seed={args.seed}",
    f"--torch_threads={args.torch_threads}",
  ]
  proc = subprocess.run(command, capture_output=True, text=True)
  lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
  if proc.returncode != 0 or not lines:
    tail = "\n".join(proc.stderr.strip().splitlines()[-STDERR_TAIL_LINES:])
    raise SystemExit(
      f"bench_vs_torchvision: the {contender} {mode} worker failed (exit code "
      f"{proc.returncode}); the end of its output:\n{tail or proc.stdout[-2000:]}"
    )
  return json.loads(lines[-1][len(RESULT_PREFIX) :])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  """The command line (module docstring).

  Args:
    argv: arguments without the program name; None = sys.argv[1:].

  Returns:
    The parsed namespace.
  """
  parser = argparse.ArgumentParser(
    description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--size", type=parse_size, default=(512, 1024), help="HxW (512x1024)")
  parser.add_argument("--batch", type=int, default=1, help="images per step")
  parser.add_argument("--steps", type=int, default=6, help="timed steps per worker")
  parser.add_argument(
    "--warmup", type=int, default=2, help="untimed calls per worker (the first compiles ours)"
  )
  parser.add_argument("--rounds", type=int, default=2, help="workers per contender and mode")
  parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
  parser.add_argument("--contenders", nargs="+", choices=CONTENDERS, default=list(CONTENDERS))
  parser.add_argument("--seed", type=int, default=0, help="of the random batch and weights")
  parser.add_argument(
    "--torch_threads",
    type=int,
    default=os.cpu_count(),
    help="torch.set_num_threads of the torchvision worker (default: every core, as XLA)",
  )
  parser.add_argument("--json", metavar="OUT", help="also write the results to this file")
  parser.add_argument("--worker", choices=CONTENDERS, help=argparse.SUPPRESS)
  parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  for name in ("batch", "steps", "warmup", "rounds", "torch_threads"):
    if getattr(args, name) < 1:
      parser.error(f"--{name} must be at least 1")
  if args.worker and not args.mode:
    parser.error("--worker needs --mode")
  return args


def main(argv: list[str] | None = None) -> None:
  """Runs every worker, prints the table and optionally writes --json.

  Args:
    argv: arguments without the program name; None = sys.argv[1:].
  """
  args = parse_args(argv)
  if args.worker:
    worker(args)
    return
  if TORCHVISION in args.contenders and (message := missing_torch()):
    raise SystemExit(message)

  height, width = args.size
  load_start = os.getloadavg()[0]
  records = []
  for mode in args.modes:
    for round_index in range(args.rounds):
      for contender in args.contenders:
        start = time.perf_counter()
        record = run_worker(args, contender, mode)
        record["round"] = round_index
        records.append(record)
        print(
          f"[{mode} round {round_index + 1}/{args.rounds}] {contender}: median "
          f"{statistics.median(record['steps_s']):.3f} s, first call {record['first_s']:.1f} s, "
          f"worker {time.perf_counter() - start:.0f} s, load average {record['load_average']:.2f}",
          file=sys.stderr,
          flush=True,
        )
  load_end = os.getloadavg()[0]

  summary = summarize(records)
  environment = {
    "cpu_model": cpu_model(),
    "cores": os.cpu_count(),
    "load_average_start": load_start,
    "load_average_end": load_end,
    "load_average_workers": [r["load_average"] for r in records],
    "versions": {p: _version(p) for p in ("torch", "torchvision", "jax", "jaxlib")},
  }
  versions = ", ".join(f"{p} {v}" for p, v in environment["versions"].items())
  worker_loads = environment["load_average_workers"]
  print(
    f"\n{height}x{width}, batch {args.batch}, {args.steps} timed steps x {args.rounds} rounds "
    f"per contender and mode (median over all); ratio = time / {REFERENCE}'s time\n"
  )
  print(format_table(summary, args.contenders, args.modes))
  print(
    f"\nCPU: {environment['cpu_model']}, {environment['cores']} cores (torch threads "
    f"{args.torch_threads}); load average (1 min) {load_start:.2f} at start, {load_end:.2f} at "
    f"end, {min(worker_loads):.2f}..{max(worker_loads):.2f} at the workers' ends\n{versions}"
  )
  if load_start > BUSY_LOAD:
    print(
      f"warning: the machine was busy (load average {load_start:.2f} before the first worker); "
      "other processes slow torch's OpenMP more than XLA's thread pool, so the ratios favour "
      "ours more than on an idle machine (see --torch_threads)"
    )
  losses = {
    r["contender"]: r["loss"] for r in records if r["mode"] == "train" and r["loss"] is not None
  }
  if losses:
    print("last train loss: " + ", ".join(f"{c} {v:.4g}" for c, v in losses.items()))
  if args.json:
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "mode", "json")}
    with open(args.json, "w") as f:
      json.dump(
        {"settings": settings, "environment": environment, "summary": summary, "runs": records},
        f,
        indent=2,
      )


if __name__ == "__main__":
  main()
