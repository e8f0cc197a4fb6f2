"""The learning-rate schedule at its boundary steps and the frozen/no-decay masks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segrpn_jax import optim
from segrpn_jax.configs import case1, default
from segrpn_jax.models.resnet import ResNet


@pytest.mark.parametrize(
  ("step", "lr"),
  [
    (0, 0.0003),
    (250, 0.00065),  # halfway through the linear warm-up
    (499, 0.0003 + 0.0007 * 499 / 500),
    (500, 0.001),
    (59_999, 0.001),
    (60_000, 0.0001),
    (79_999, 0.0001),
    (80_000, 0.00001),
    (96_000, 0.00001),
  ],
)
def test_paper_schedule_at_boundaries(step, lr):
  schedule = optim.learning_rate_schedule(default.get_config().train)
  np.testing.assert_allclose(float(schedule(step)), lr, rtol=1e-6)


def test_frozen_params_never_move_and_norms_skip_weight_decay():
  config = default.get_config().train
  config.base_lr = config.warmup_start_lr = 0.5
  params = {
    "backbone": {"conv1": {"kernel": jnp.ones(3)}, "layer2": {"kernel": jnp.ones(3)}},
    "fpn": {"gn": {"scale": jnp.ones(3)}, "lateral": {"kernel": jnp.ones(3)}},
  }
  is_frozen = optim.frozen_predicate([("backbone", "conv1")])
  tx, _ = optim.create_optimizer(config, params, is_frozen)
  grads = {
    "backbone": {"conv1": {"kernel": jnp.ones(3)}, "layer2": {"kernel": jnp.zeros(3)}},
    "fpn": {"gn": {"scale": jnp.zeros(3)}, "lateral": {"kernel": jnp.zeros(3)}},
  }
  updates, _ = tx.update(grads, tx.init(params), params)
  # Frozen: no gradient step, no weight decay.
  np.testing.assert_array_equal(updates["backbone"]["conv1"]["kernel"], 0.0)
  # Zero gradient: the update is weight decay alone, -lr * wd * w, except for norm parameters.
  np.testing.assert_allclose(updates["backbone"]["layer2"]["kernel"], -0.5 * 1e-4, rtol=1e-6)
  np.testing.assert_allclose(updates["fpn"]["lateral"]["kernel"], -0.5 * 1e-4, rtol=1e-6)
  np.testing.assert_array_equal(updates["fpn"]["gn"]["scale"], 0.0)


def _resnet18_labels(norm):
  model = ResNet(depth=18, norm=norm, width_multiplier=0.25)
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  labels = optim.param_labels(variables["params"], lambda path: False)
  flat = jax.tree_util.tree_flatten_with_path(labels)[0]
  return {tuple(k.key for k in path): label for path, label in flat}


@pytest.mark.parametrize("norm", ["gn", "bn"])
def test_resnet18_decays_every_conv_and_no_norm(norm):
  labels = _resnet18_labels(norm)
  # torchvision's ResNet-18: stem conv1/bn1; 4 stages x 2 basic blocks with conv1/bn1,
  # conv2/bn2; the first block of layer2..4 also has the projection downsample_conv/_bn.
  convs, norms = [("conv1",)], [("bn1",)]
  for stage in ("layer1", "layer2", "layer3", "layer4"):
    for block in ("block0", "block1"):
      prefix = (stage, block)
      convs += [(*prefix, "conv1"), (*prefix, "conv2")]
      norms += [(*prefix, "bn1"), (*prefix, "bn2")]
      if block == "block0" and stage != "layer1":
        convs.append((*prefix, "downsample_conv"))
        norms.append((*prefix, "downsample_bn"))
  decay = {(*c, "kernel") for c in convs}  # ResNet convs have no bias
  no_decay = {(*n, leaf) for n in norms for leaf in ("scale", "bias")}
  assert len(decay) == 20 and len(no_decay) == 2 * 20
  assert {p for p, label in labels.items() if label == "decay"} == decay
  assert {p for p, label in labels.items() if label == "no_decay"} == no_decay
  assert set(labels) == decay | no_decay


def test_config_tokens():
  c = case1.get_config("roi,synthetic")
  assert (c.model.fusion.train, c.model.fusion.inference) == ("roi", "roi")
  assert c.data.dataset == "synthetic_streets"
  assert c.model.scale_case == "case1"
  assert case1.get_config().model.fusion.train == "roi+rpn"
  with pytest.raises(ValueError, match="'roi\\+rnp'"):
    case1.get_config("roi+rnp")
