"""segrpn_jax.benchmark: random_batch honours the batch contract of docs/architecture.md, and
paper_config is the paper setting; the configs' `tiny` token that tests and bench_eval share."""

import importlib.util
import os

import numpy as np
import pytest

from segrpn_jax import benchmark
from segrpn_jax import state as state_lib
from segrpn_jax.configs import baseline, case1, default


def test_random_batch_has_the_contract_shapes_dtypes_and_consistent_instances():
  config = default.get_config()
  config.data.image_size = (64, 96)
  config.data.max_instances = 10
  batch = benchmark.random_batch(config, batch_size=2, seed=3)
  height, width, n = 64, 96, 10
  expected = {
    "image": (np.float32, (2, height, width, 3)),
    "semantic": (np.int32, (2, height, width)),
    "instance_map": (np.int32, (2, height, width)),
    "crowd": (np.bool_, (2, height, width)),
    "boxes": (np.float32, (2, n, 4)),
    "classes": (np.int32, (2, n)),
    "valid": (np.bool_, (2, n)),
    "example_mask": (np.bool_, (2,)),
  }
  assert {k: (v.dtype.type, v.shape) for k, v in batch.items()} == expected
  for b in range(2):
    valid = batch["valid"][b]
    assert valid.sum() == n // 2 and not valid[n // 2 :].any()  # real instances first
    classes = batch["classes"][b]
    assert ((classes[valid] >= 1) & (classes[valid] <= config.model.num_classes)).all()
    assert (classes[~valid] == 0).all()
    assert ((batch["semantic"][b] >= 0) & (batch["semantic"][b] < 19)).all()
    for k in np.unique(batch["instance_map"][b]):
      if k == 0:
        continue
      # Every pixel of instance k lies inside box k - 1 (its rectangle, rounded outwards).
      ys, xs = np.nonzero(batch["instance_map"][b] == k)
      x1, y1, x2, y2 = batch["boxes"][b, k - 1]
      assert valid[k - 1]
      assert xs.min() >= np.floor(x1) and xs.max() < np.ceil(x2)
      assert ys.min() >= np.floor(y1) and ys.max() < np.ceil(y2)
      assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height


def _flat(config) -> dict:
  """Dotted key -> value of a ConfigDict."""
  out = {}

  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, dict):
        walk(value, f"{prefix}{key}.")
      else:
        out[prefix + key] = value

  walk(config.to_dict(), "")
  return out


def test_paper_config_is_the_paper_setting_with_only_the_benchmark_keys_changed():
  changed = {
    "model.pretrained": "",
    "model.dtype": "bfloat16",
    "model.backbone": "resnet101",
    "data.image_size": (256, 512),
    "train.batch_size": 8,
    "eval.batch_size": 8,
  }
  for name, paper, extra in (
    ("segrpn", case1.get_config(), {}),
    ("baseline", baseline.get_config(), {}),
    ("det", baseline.get_config(), {"model.semantic_head": False}),
  ):
    config = benchmark.paper_config(name, (256, 512), 8, "bfloat16", "resnet101")
    expected = {**_flat(paper), **changed, **extra}
    assert _flat(config) == expected, name
  segrpn = benchmark.paper_config()  # the defaults: SegRPN at the paper's 512x1024, batch 1
  assert segrpn.data.image_size == (512, 1024) and segrpn.train.batch_size == 1
  assert segrpn.model.class_agnostic and segrpn.model.fusion.train == "roi+rpn"
  with pytest.raises(ValueError, match=r"unknown benchmark model 'yolo'"):
    benchmark.paper_config("yolo")


def test_the_tiny_token_is_synthetic_made_small_in_any_order():
  synthetic = _flat(case1.get_config("synthetic"))
  tiny = _flat(case1.get_config("tiny"))
  for tokens in ("synthetic,tiny", "tiny,synthetic"):
    assert _flat(case1.get_config(tokens)) == tiny, tokens
  assert _flat(case1.get_config("roi,tiny"))["model.fusion.train"] == "roi"
  assert tiny["data.dataset"] == "synthetic_streets/tiny" and tiny["data.image_size"] == (64, 128)
  assert (tiny["train.batch_size"], tiny["train.num_steps"]) == (2, 2)
  # Only sizes and the schedule change; the model's structure stays the synthetic one.
  for key in ("model.backbone", "model.norm", "model.class_agnostic", "model.scale_case",
              "model.fusion.train", "model.pretrained", "train.base_lr"):  # fmt: skip
    assert tiny[key] == synthetic[key], key
  # The scale-case thresholds follow the image: size_scale is the image height over 512.
  assert tiny["model.size_scale"] == 64 / 512
  with pytest.raises(ValueError, match=r"unknown config token 'small'.*'synthetic', 'tiny'"):
    case1.get_config("small")


def test_random_batch_and_bench_quickstart_use_the_training_crop():
  path = os.path.join(os.path.dirname(__file__), "..", "scripts", "bench_quickstart.py")
  spec = importlib.util.spec_from_file_location("bench_quickstart", path)
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  overrides = script.parse_overrides("data.train_crop_size=(128,256) train.batch_size=8 m=gn")
  assert overrides == {"data.train_crop_size": (128, 256), "train.batch_size": 8, "m": "gn"}
  del overrides["m"]
  config = script.quick_start_config(overrides)
  assert tuple(config.data.image_size) == (256, 512) and config.train.batch_size == 8
  batch = benchmark.random_batch(config, batch_size=1, size=state_lib.train_image_size(config))
  assert batch["image"].shape == (1, 128, 256, 3) and batch["semantic"].shape == (1, 128, 256)
  assert benchmark.random_batch(config, batch_size=1)["image"].shape == (1, 256, 512, 3)
  for key in ("model.widht", "modl.width_multiplier", "seed.x"):
    with pytest.raises(SystemExit, match=f"no key {key!r}".replace(".", r"\.")):
      script.quick_start_config({key: 0.5})
  with pytest.raises(SystemExit, match="is not KEY=VALUE"):
    script.parse_overrides("train.batch_size")
