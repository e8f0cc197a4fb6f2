"""Parameter counts, and FLOPs and time per part of SegRPN's train step and inference.

  python scripts/bench_model.py                           # case1 ResNet-50, 512x1024, batch 1
  python scripts/bench_model.py --model det --size 256x512 --repeats 3
  python scripts/bench_model.py --counts_only
  python scripts/bench_model.py --quick_start             # configs/case1.py:synthetic, batch 4

Parts, each compiled on its own with inputs of the shapes it sees in the model (random weights,
random inputs): backbone, FPN, RPN_det (3x3 conv and 1x1 predictors on P2..P6), class-agnostic
module (per-level convs, level logits, priors, the stride-4 map), RPN_mask, semantic head, box
head (on the ROIs of one step: roi.batch_size_per_image per image in training,
rpn.post_nms_topk_test at inference). "train" is forward + backward as the train step runs it
(gradients of the trainable parameters and of the inputs that come from trainable parts);
"inference" the forward alone. The whole train step (`train.train_step`, optimizer included) and
the whole inference (`api.predict`) are measured too; "rest" is the whole minus the parts:
anchor matching and sampling, proposals (top-k, NMS), RoIAlign, post-processing, losses and the
optimizer update. FLOPs are XLA's cost analysis of each compiled program; times are warm medians
of `--repeats` calls, with the host's load average (other processes slow them down).

Models (`segrpn_jax.benchmark.paper_config`, the bench scripts' shared config): `segrpn` =
configs/case1.py (roi+rpn), `baseline` = configs/baseline.py, `det` = the baseline without its
semantic head (what torchvision's Faster R-CNN computes).
"""

import argparse
import functools
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from segrpn_jax import api, benchmark
from segrpn_jax.configs import case1
from segrpn_jax.models import rpn as rpn_lib
from segrpn_jax.models.fpn import LEVELS, ROI_LEVELS


def parameter_count(config) -> tuple[int, int]:
  """(trainable params, non-trainable variables such as frozen BN statistics)."""
  shapes = jax.eval_shape(lambda k: api.init_variables(config, k), jax.random.key(0))
  sizes = {c: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(v)) for c, v in shapes.items()}
  return sizes.pop("params"), sum(sizes.values())


def _rpn(head: str):
  def run(module, pyramid):
    rpn_head = getattr(module, head)
    return rpn_head.predict(rpn_lib.flatten_levels(rpn_head.features([pyramid[k] for k in LEVELS])))

  return run


def parts(config, batch: int, train: bool) -> dict:
  """{part: (fn(module, *inputs) -> outputs, inputs, differentiate the inputs)}."""
  m = config.model
  model = api.create_model(config)
  variables = api.init_variables(config, jax.random.key(0))
  images = jnp.asarray(benchmark.random_batch(config, batch)["image"])
  trunk = lambda module, x: module.fpn(module.backbone(x))
  features = jax.eval_shape(
    lambda v, x: model.apply(v, x, method=lambda mod, y: mod.backbone(y)), variables, images
  )
  pyramid = jax.eval_shape(lambda v, x: model.apply(v, x, method=trunk), variables, images)
  rand = lambda tree: jax.tree.map(
    lambda s: jax.random.normal(jax.random.key(1), s.shape, s.dtype), tree
  )
  features, pyramid = rand(features), rand(pyramid)
  rois = m.roi.batch_size_per_image if train else m.rpn.post_nms_topk_test
  side = m.roi.pooler_resolution
  out = {
    "backbone": (lambda mod, x: mod.backbone(x), (images,), False),
    "FPN": (lambda mod, f: mod.fpn(f), (features,), True),
    "RPN_det": (_rpn("rpn_det"), (pyramid,), True),
  }
  if m.class_agnostic:
    out["class-agnostic module"] = (lambda mod, p: mod.class_agnostic(p), (pyramid,), True)
    out["RPN_mask"] = (_rpn("rpn_mask"), (pyramid,), True)
  if m.semantic_head:
    prior = None
    if m.class_agnostic:
      prior = rand(
        jax.ShapeDtypeStruct(
          (batch, *pyramid["P2"].shape[1:3], m.semantic_channels), pyramid["P2"].dtype
        )
      )
    out["semantic head"] = (
      lambda mod, p, q: mod.semantic_head({k: p[k] for k in ROI_LEVELS}, q),
      (pyramid, prior),
      True,
    )
  pooled = rand(jax.ShapeDtypeStruct((batch, rois, side, side, m.fpn_channels), jnp.float32))
  out["box head"] = (lambda mod, r: mod.box_head(r), (pooled,), True)
  return model, variables, out


def part_program(model, variables, fn, inputs, grad_inputs: bool, train: bool):
  """(jitted program, its arguments): the part's forward, or forward + backward.

  Weights and inputs are arguments, not constants of the program: XLA would fold constants.
  """
  apply = lambda params, *xs: model.apply({**variables, "params": params}, *xs, method=fn)
  args = (variables["params"], *inputs)
  if not train:
    return jax.jit(apply), args

  def loss(params, *xs):
    outputs = apply(params, *xs)
    # A cotangent that differs per element, so no part of the backward folds away.
    return sum(
      jnp.sum(jnp.sin(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape) * y)
      for y in jax.tree.leaves(outputs)
    )

  argnums = tuple(range(len(args))) if grad_inputs else 0
  return jax.jit(jax.grad(loss, argnums)), args


def flops(jitted, *args, **kwargs) -> float:
  """XLA's FLOP count of a jitted function's compiled program (NaN if it gives none)."""
  count = benchmark.xla_flops(jitted.lower(*args, **kwargs).compile())
  return float("nan") if count is None else count


def whole_programs(config, batch: int, repeats: int) -> dict:
  """{'train': (GFLOP, seconds), 'inference': (GFLOP, seconds)} of the whole step / predict."""
  step, state = benchmark.train_step_fn(config)
  data = benchmark.random_batch(config, batch)
  train_gflop = flops(step, state, data) / 1e9
  holder = [state]

  def run_step():
    holder[0], metrics = step(holder[0], data)
    return metrics

  _, train_warm = benchmark.time_calls(run_step, repeats)
  model = api.create_model(config)
  variables = api.init_variables(config, jax.random.key(0))
  images = jnp.asarray(data["image"])
  fusion = config.model.fusion.inference
  infer_gflop = flops(api.predict, model, variables, images, fusion=fusion) / 1e9
  _, infer_warm = benchmark.time_calls(
    functools.partial(api.predict, model, variables, images, fusion=fusion), repeats
  )
  return {
    "train": (train_gflop, float(np.median(train_warm))),
    "inference": (infer_gflop, float(np.median(infer_warm))),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="segrpn", choices=list(benchmark.MODELS))
  parser.add_argument("--backbone", default="resnet50")
  parser.add_argument("--size", default="512x1024", help="HxW")
  parser.add_argument("--batch", type=int, default=1)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  parser.add_argument("--counts_only", action="store_true", help="parameter counts only")
  parser.add_argument(
    "--quick_start",
    action="store_true",
    help="the quick start's config (configs/case1.py:synthetic, its batch and size) instead",
  )
  args = parser.parse_args()
  size = tuple(int(v) for v in args.size.split("x"))

  for name in ("segrpn", "baseline", "det"):
    params, other = parameter_count(benchmark.paper_config(name, size, backbone=args.backbone))
    print(f"{name:9s} {args.backbone}: {params:,} parameters (+{other:,} non-trainable)")
  if args.counts_only:
    return

  # `flops` compiles each program a second time: let that be a cache hit.
  jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="bench_model_cache_"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  config = benchmark.paper_config(args.model, size, args.batch, args.dtype, args.backbone)
  if args.quick_start:
    config = case1.get_config("synthetic")
    args.model, args.backbone, args.batch = "segrpn", config.model.backbone, config.train.batch_size
    size = tuple(config.data.image_size)
  print(
    f"\n{args.model} {args.backbone} {size[0]}x{size[1]} batch {args.batch} {args.dtype} on "
    f"{jax.devices()[0].device_kind} ({os.cpu_count()} cores); warm medians of {args.repeats}"
  )
  rows = {}
  for mode in ("train", "inference"):
    model, variables, found = parts(config, args.batch, train=mode == "train")
    for part, (fn, inputs, grad_inputs) in found.items():
      program, program_args = part_program(
        model, variables, fn, inputs, grad_inputs, mode == "train"
      )
      _, warm = benchmark.time_calls(functools.partial(program, *program_args), args.repeats)
      gflop = flops(program, *program_args) / 1e9
      rows.setdefault(part, {})[mode] = (gflop, float(np.median(warm)))
  whole = whole_programs(config, args.batch, args.repeats)
  rows["rest"] = {
    mode: tuple(whole[mode][i] - sum(r[mode][i] for r in rows.values()) for i in (0, 1))
    for mode in whole
  }
  rows["whole"] = whole

  print("| part | train GFLOP | train s | train share | inference GFLOP | inference s |")
  print("|---|---|---|---|---|---|")
  for part, r in rows.items():
    (tg, ts), (ig, is_) = r["train"], r["inference"]
    share = ts / whole["train"][1]
    print(f"| {part} | {tg:.1f} | {ts:.3f} | {share:.0%} | {ig:.1f} | {is_:.3f} |")
  print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
  main()
