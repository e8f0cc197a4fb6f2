"""SegRPN without RPN_mask (config.model.rpn_mask False, `configs/segrpn.py:no_rpn_mask`), the
network of the paper's Fig. 5: its config token, its parameters (those of SegRPN less RPN_mask),
one real training step without RPN_mask losses, and one readable error for a fusion."""

import functools

import jax
import numpy as np
import pytest

from segrpn_jax import api, errors
from segrpn_jax import state as state_lib
from segrpn_jax.configs import segrpn

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
H, W = 64, 128


def tiny(arg: str = "no_rpn_mask"):
  """The smallest model that runs every head: ResNet-18 x 0.25 at 64x128, 16-wide heads."""
  c = segrpn.get_config(arg)
  c.data.image_size = (H, W)
  c.data.max_instances = 2
  m = c.model
  m.backbone, m.width_multiplier, m.norm, m.pretrained = "resnet18", 0.25, "gn", ""
  m.fpn_channels = m.semantic_channels = 16
  m.class_agnostic_convs = 1
  m.size_scale = H / 512
  m.anchor.sizes = (8, 16, 32, 64, 128)
  m.rpn.pre_nms_topk_train = m.rpn.pre_nms_topk_test = 32
  m.rpn.post_nms_topk_train = m.rpn.post_nms_topk_test = 32
  m.roi.fc_dim, m.roi.batch_size_per_image = 16, 16
  m.roi.canonical_size = 224 // 8
  c.train.warmup_steps, c.train.base_lr = 1, 0.01
  return c


def batch():
  """One 64x128 image with a car and a person (batch contract)."""
  image = np.full((1, H, W, 3), -0.5, np.float32)
  semantic = np.zeros((1, H, W), np.int32)  # road
  instance_map = np.zeros((1, H, W), np.int32)
  boxes = np.array([[[10, 20, 50, 50], [80, 8, 96, 56]]], np.float32)
  for k, (x1, y1, x2, y2) in enumerate(boxes[0].astype(int)):
    image[0, y1:y2, x1:x2] = ((1.5, 0.2, -1.0), (-1.0, 1.8, 0.5))[k]
    semantic[0, y1:y2, x1:x2] = (13, 11)[k]  # car, person
    instance_map[0, y1:y2, x1:x2] = k + 1
  return {
    "image": image,
    "semantic": semantic,
    "instance_map": instance_map,
    "crowd": np.zeros((1, H, W), bool),
    "boxes": boxes,
    "classes": np.array([[3, 1]], np.int32),
    "valid": np.ones((1, 2), bool),
  }


def _shapes(tree):
  return jax.tree.map(lambda x: x.shape, tree)


def test_the_token_drops_rpn_mask_and_its_fusion():
  c = segrpn.get_config("no_rpn_mask")
  assert not c.model.rpn_mask and c.model.class_agnostic
  assert (c.model.fusion.train, c.model.fusion.inference) == ("none", "none")
  assert c.model.scale_case == "none"  # the Table I setting otherwise
  synthetic = segrpn.get_config("synthetic,no_rpn_mask")
  assert not synthetic.model.rpn_mask and synthetic.data.dataset == "synthetic_streets"
  assert segrpn.get_config("roi").model.rpn_mask  # RPN_mask by default
  with pytest.raises(errors.ConfigError, match=r"'no_rpn_mask' and 'roi'.*drop one"):
    segrpn.get_config("no_rpn_mask,roi")


def test_parameters_are_segrpn_less_rpn_mask():
  variant, full = tiny(), tiny("roi+rpn")
  v = jax.eval_shape(lambda k: api.init_variables(variant, k), jax.random.key(0))
  v_full = jax.eval_shape(lambda k: api.init_variables(full, k), jax.random.key(0))
  assert set(v["params"]) == {
    "backbone",
    "fpn",
    "rpn_det",
    "class_agnostic",
    "semantic_head",
    "box_head",
  }
  assert set(v_full["params"]) - set(v["params"]) == {"rpn_mask"}
  for name in v["params"]:  # the class-agnostic module and its prior are kept as they are
    assert _shapes(v["params"][name]) == _shapes(v_full["params"][name])


@pytest.fixture(scope="module")
def one_step():
  config = tiny()
  model = api.create_model(config)
  state = state_lib.init_state(config, jax.random.key(0))
  step = jax.jit(
    functools.partial(state_lib.train_step, model=model, config=config), compiler_options=FAST
  )
  new_state, metrics = step(state, batch())
  return state, jax.device_get(new_state), jax.device_get(metrics)


def test_one_training_step_without_rpn_mask_losses(one_step):
  state, new_state, metrics = one_step
  assert int(new_state.step) == 1
  assert not any(k.startswith("rpn_mask/") for k in metrics)
  assert {"rpn_det/objectness", "rpn_det/box", "class_agnostic", "class_agnostic_map"} <= set(
    metrics
  )
  parts = ("rpn_det/objectness", "rpn_det/box", "roi/cls", "roi/box", "semantic")
  parts += ("class_agnostic", "class_agnostic_map")
  # Every loss weight is 1: the total is the sum of the parts present, none of RPN_mask.
  np.testing.assert_allclose(metrics["loss"], sum(metrics[k] for k in parts), rtol=1e-5)
  assert np.isfinite(metrics["loss"]) and metrics["grad_norm"] > 0
  # The step moves the class-agnostic module (its own losses and the semantic prior) and
  # RPN_det; nothing named rpn_mask exists before or after.
  for name in ("class_agnostic", "rpn_det", "semantic_head"):
    moved = jax.tree.map(
      lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
      state.params[name],
      new_state.params[name],
    )
    assert max(jax.tree.leaves(moved)) > 0, name
  assert "rpn_mask" not in state.params and "rpn_mask" not in new_state.params
  assert not any("rpn_mask" in str(p) for p, _ in jax.tree_util.tree_flatten_with_path(
    new_state.opt_state)[0])  # fmt: skip


def test_a_fusion_without_rpn_mask_is_one_readable_error():
  config = tiny()
  config.model.fusion.inference = "roi"
  with pytest.raises(errors.ConfigError, match=r"fusion.inference = 'roi'.*rpn_mask = False"):
    jax.eval_shape(lambda k: api.init_variables(config, k), jax.random.key(0))
  config = tiny()
  model = api.create_model(config)
  v = jax.eval_shape(lambda k: api.init_variables(config, k), jax.random.key(0))
  image = jax.ShapeDtypeStruct((1, H, W, 3), np.float32)
  with pytest.raises(errors.ConfigError, match=r"fusion = 'rpn'.*set the fusion to 'none'"):
    jax.eval_shape(lambda v, x: model.apply(v, x, fusion="rpn"), v, image)
  maps = jax.eval_shape(functools.partial(api.rpn_maps, model), v, image)
  assert set(maps["P2"]) == {"rpn_det_features", "rpn_det_logits", "rpn_det_objectness"}
