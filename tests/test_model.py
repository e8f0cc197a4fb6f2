"""SegRPN composition: output shapes (a tiny real run; ResNet-50 at 512x1024 by eval_shape only),
the baseline's variables, every fusion switch against independently computed per-level maps,
anchor and ROI sampling in the training forward, gradients into every head, overfitting one
hand-made batch, and hand-made cases of ROI sampling and detection post-processing.

Compiled functions are shared through module-scoped fixtures, and they are compiled with XLA's
backend optimisations off: the tiny model runs in milliseconds either way.
"""

import functools

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from segrpn_jax import api, losses, optim, pretrained
from segrpn_jax.configs import default
from segrpn_jax.models import fpn, roi_heads, rpn
from segrpn_jax.models.segrpn import SegRPN
from segrpn_jax.ops import boxes as box_ops
from segrpn_jax.ops.resize import resize_bilinear

FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
H, W = 128, 256
FUSIONS = ("none", "rpn", "roi", "roi+rpn")
LEVEL_SHAPES = [(32, 64), (16, 32), (8, 16), (4, 8), (2, 4)]  # P2..P6 of 128x256
NUM_ANCHORS = 3 * sum(h * w for h, w in LEVEL_SHAPES)
# The loss is below a third of its start by step 4; mean of steps 5-9 / step 0: 3.01 / 14.1 (our
# measurement, jax 0.10.2), the assertion's margin 1.6x.
OVERFIT_STEPS = 10


def tiny_config():
  c = default.get_config()
  c.data.image_size = (H, W)
  c.data.max_instances = 4
  m = c.model
  m.backbone, m.width_multiplier, m.norm, m.pretrained = "resnet18", 0.25, "gn", ""
  m.freeze_at = 2  # detectron2's choice, so that the frozen stages get tested
  m.fpn_channels, m.semantic_channels = 32, 16
  m.size_scale = H / 512
  m.rpn.pre_nms_topk_train = m.rpn.pre_nms_topk_test = 100
  m.rpn.post_nms_topk_train = m.rpn.post_nms_topk_test = 100
  m.roi.fc_dim, m.roi.batch_size_per_image = 64, 32
  return c


# (box, class, colour): two cars and a person on a grey street.
OBJECTS = [
  ((20, 40, 100, 90), 3, (1.5, 0.2, -1.0)),
  ((150, 30, 180, 110), 1, (-1.0, 1.8, 0.5)),
  ((200, 60, 240, 80), 3, (1.0, 1.0, 1.5)),
]


def hand_batch():
  """One image with three boxes and matching semantic / instance maps (batch contract)."""
  rs = np.random.RandomState(0)
  image = np.full((H, W, 3), -0.5, np.float32) + 0.1 * rs.randn(H, W, 3).astype(np.float32)
  semantic = np.full((H, W), 2, np.int32)  # building
  semantic[100:] = 0  # road
  semantic[:10] = 255  # unlabelled
  instance_map = np.zeros((H, W), np.int32)
  boxes, classes, valid = np.zeros((4, 4), np.float32), np.zeros(4, np.int32), np.zeros(4, bool)
  for k, ((x1, y1, x2, y2), cls, colour) in enumerate(OBJECTS):
    image[y1:y2, x1:x2] = colour
    semantic[y1:y2, x1:x2] = cls + 10  # thing trainId
    instance_map[y1:y2, x1:x2] = k + 1
    boxes[k], classes[k], valid[k] = (x1, y1, x2, y2), cls, True
  batch = {
    "image": image,
    "semantic": semantic,
    "instance_map": instance_map,
    "crowd": np.zeros((H, W), bool),
    "boxes": boxes,
    "classes": classes,
    "valid": valid,
  }
  return {k: v[None] for k, v in batch.items()}


@pytest.fixture(scope="module")
def tiny():
  config = tiny_config()
  return config, api.create_model(config), api.init_variables(config, jax.random.key(0))


@pytest.fixture(scope="module")
def inference(tiny):
  """Inference of two images (the hand-made one and noise) under every fusion, and rpn_maps.

  Returns (images, full, logits, maps, none, multi): full and none are __call__ under
  config.model.fusion.inference (roi+rpn) and 'none', multi is predict_fusions of both.
  """
  _, model, variables = tiny
  noise = np.random.RandomState(1).randn(1, H, W, 3).astype(np.float32)
  images = np.concatenate([hand_batch()["image"], noise])

  @functools.partial(jax.jit, compiler_options=FAST)
  def run(variables, images):
    full = model.apply(variables, images, train=False)  # config.model.fusion.inference
    none = model.apply(variables, images, train=False, fusion="none")
    logits = {
      f: model.apply(variables, images, train=False, fusion=f)["rpn_logits"]
      for f in FUSIONS
      if f != "none"
    }
    logits["none"] = none["rpn_logits"]
    multi = model.apply(variables, images, ("roi+rpn", "none"), method=SegRPN.predict_fusions)
    return full, logits, model.apply(variables, images, method=SegRPN.rpn_maps), none, multi

  full, logits, maps, none, multi = jax.device_get(run(variables, images))
  return images, full, logits, maps, none, multi


@pytest.fixture(scope="module")
def overfit(tiny):
  """SGD with momentum on the hand-made batch; keeps the first step's outputs and gradients."""
  config, model, variables = tiny
  extra = {k: v for k, v in variables.items() if k != "params"}
  batch = hand_batch()

  def loss_fn(params, key):
    out = model.apply(
      {"params": params, **extra}, batch["image"], targets=batch, train=True, rngs={"sampling": key}
    )
    total, parts = losses.segrpn_loss(out, batch, config)
    return total, (parts, out)

  @functools.partial(jax.jit, compiler_options=FAST)
  def step(params, velocity, key):
    (total, (parts, out)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, key)
    velocity = jax.tree.map(lambda v, g: 0.9 * v + g, velocity, grads)
    params = jax.tree.map(lambda p, v: p - 0.01 * v, params, velocity)
    return params, velocity, total, parts, grads, out

  params = variables["params"]
  velocity = jax.tree.map(jnp.zeros_like, params)
  history = []
  for i in range(OVERFIT_STEPS):
    params, velocity, total, parts, grads, out = step(
      params, velocity, jax.random.fold_in(jax.random.key(7), i)
    )
    history.append(float(total))
    if i == 0:
      first = jax.device_get({"parts": parts, "grads": grads, "outputs": out})
  return {"history": history, **first}


def test_tiny_inference_shapes_and_ranges(inference):
  _, full, _, _, _, _ = inference
  det, prop = full["detections"], full["proposals"]
  assert det["boxes"].shape == (2, 100, 4) and det["valid"].shape == (2, 100)
  assert prop["boxes"].shape == (2, 100, 4) and prop["scores"].shape == (2, 100)
  assert full["semantic_logits"].shape == (2, H // 4, W // 4, 19)
  assert full["semantic_labels"].shape == (2, H, W)
  assert full["semantic_foreground_prob"].shape == (2, H, W)
  assert [x.shape[1:] for x in full["class_agnostic_logits"]] == LEVEL_SHAPES
  assert full["rpn_logits"].shape == (2, NUM_ANCHORS)
  for i in range(2):
    ok = det["valid"][i]
    assert np.all(det["scores"][i][ok] > 0.05)
    assert np.all(np.diff(det["scores"][i][ok]) <= 0)
    assert np.all((det["classes"][i][ok] >= 1) & (det["classes"][i][ok] <= 8))
    assert np.all(det["boxes"][i][~ok] == 0) and np.all(det["classes"][i][~ok] == 0)
    assert np.all(det["boxes"][i][ok] >= 0) and np.all(det["boxes"][i][ok][:, [0, 2]] <= W)
    valid = prop["valid"][i]
    assert valid.sum() > 0 and np.all(np.diff(prop["scores"][i][valid]) <= 0)
    # Every proposal's logit is one of the anchor logits that ranked them.
    assert np.all(np.isin(prop["logits"][i][valid], full["rpn_logits"][i]))
    np.testing.assert_allclose(prop["scores"][i], 1 / (1 + np.exp(-prop["logits"][i])), rtol=1e-5)
  assert full["semantic_labels"].min() >= 0 and full["semantic_labels"].max() < 19
  for key in ("semantic_foreground_prob", "class_agnostic_prob"):
    assert full[key].shape == (2, H, W)
    assert np.all((full[key] >= -1e-6) & (full[key] <= 1 + 1e-6)), key
  # The semantic head's binary map is its total thing probability (trainIds 11..18) at input
  # size.
  probs = jax.nn.softmax(resize_bilinear(jnp.asarray(full["semantic_logits"]), H, W))
  np.testing.assert_allclose(full["semantic_foreground_prob"], probs[..., 11:].sum(-1), atol=1e-5)


def test_class_agnostic_prob_is_the_upsampled_stride4_map(inference, overfit):
  _, full, _, _, _, _ = inference
  # Step 0 of the overfit run is a training forward of image 0 with the same initial variables
  # (GroupNorm: train and inference agree), so its stride-4 map logits are inference's.
  map_logits = overfit["outputs"]["class_agnostic_map_logits"]
  assert map_logits.shape == (1, H // 4, W // 4)
  up = resize_bilinear(jnp.asarray(map_logits)[..., None], H, W)[..., 0]
  np.testing.assert_allclose(full["class_agnostic_prob"][:1], jax.nn.sigmoid(up), atol=1e-5)
  assert 0 < overfit["parts"]["class_agnostic_map"] < 1  # BCE of logits ~ 0: about log 2


def test_predict_fusions_matches_separate_calls(inference):
  _, full, _, _, none, multi = inference
  assert set(multi) == {
    "fusions",
    "semantic_logits",
    "semantic_labels",
    "semantic_foreground_prob",
    "class_agnostic_logits",
    "class_agnostic_prob",
  }
  assert set(multi["fusions"]) == {"roi+rpn", "none"}
  for fusion, single in (("roi+rpn", full), ("none", none)):
    got = multi["fusions"][fusion]
    assert set(got) == {"detections", "proposals"}
    for key in ("detections", "proposals"):
      jax.tree.map(
        functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-5), got[key], single[key]
      )
  # The fusions differ (the test is not vacuous) and the shared outputs are __call__'s.
  assert not np.allclose(full["proposals"]["logits"], none["proposals"]["logits"])
  for key in set(multi) - {"fusions"}:
    jax.tree.map(
      functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), multi[key], full[key]
    )


def test_inference_fusions():
  assert rpn.inference_fusions("roi+rpn") == ("roi+rpn", "roi", "rpn", "none")
  assert rpn.inference_fusions("roi") == ("roi", "none")
  assert rpn.inference_fusions("rpn") == ("rpn", "none")
  assert rpn.inference_fusions("none") == ("none",)
  with pytest.raises(ValueError, match="'rnp'"):
    rpn.inference_fusions("rnp")


def test_api_predict_and_rpn_maps_shapes(tiny):
  _, model, variables = tiny
  images = jax.ShapeDtypeStruct((1, H, W, 3), jnp.float32)
  out = jax.eval_shape(functools.partial(api.predict, model, fusion="none"), variables, images)
  assert set(out) == {
    "detections",
    "proposals",
    "semantic_logits",
    "semantic_labels",
    "class_agnostic_logits",
    "semantic_foreground_prob",
    "class_agnostic_prob",
  }
  maps = jax.eval_shape(functools.partial(api.rpn_maps, model), variables, images)
  assert list(maps) == ["P2", "P3", "P4", "P5", "P6"] == list(fpn.LEVELS)
  for (h, w), level in zip(LEVEL_SHAPES, maps.values(), strict=True):
    assert level["rpn_det_features"].shape == (1, h, w, 32)
    assert level["rpn_mask_objectness"].shape == (1, h, w, 3)
    assert set(level["fused_objectness"]) == {"rpn", "roi", "roi+rpn"}


def _flat(maps, key):
  return np.concatenate([m[key].reshape(m[key].shape[0], -1) for m in maps.values()], axis=1)


def test_inference_fusions_match_the_per_level_maps(tiny, inference):
  _, _, variables = tiny
  _, full, logits, maps, _, _ = inference
  det, mask = _flat(maps, "rpn_det_logits"), _flat(maps, "rpn_mask_logits")
  # rpn: RPN_det's objectness 1x1 conv on F_det + F_det * F_mask, computed here in NumPy.
  head = variables["params"]["rpn_det"]["objectness"]
  rpn = []
  for level in maps.values():
    f, f_mask = level["rpn_det_features"], level["rpn_mask_features"]
    fused = f + f * f_mask
    np.testing.assert_allclose(level["fused_features"], fused, rtol=1e-5, atol=1e-6)
    rpn.append((fused @ np.asarray(head["kernel"]) + np.asarray(head["bias"])).reshape(2, -1))
  rpn = np.concatenate(rpn, axis=1)
  np.testing.assert_allclose(logits["none"], det, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(logits["roi"], det + mask, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(logits["rpn"], rpn, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(logits["roi+rpn"], rpn + mask, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(full["rpn_logits"], rpn + mask, rtol=1e-4, atol=1e-5)
  # Each switch changes the scores by a visible amount (RPN_mask is not silent).
  assert np.abs(mask).mean() > 1e-3 and np.abs(rpn - det).mean() > 1e-4
  np.testing.assert_allclose(
    _flat(maps, "rpn_det_objectness"), 1 / (1 + np.exp(-det)), rtol=1e-5, atol=1e-7
  )
  roi_prob = np.concatenate(
    [m["fused_objectness"]["roi"].reshape(2, -1) for m in maps.values()], axis=1
  )
  np.testing.assert_allclose(roi_prob, 1 / (1 + np.exp(-(det + mask))), rtol=1e-5, atol=1e-7)


def test_train_fusion_feeds_rpn_det_loss_and_rpn_mask_keeps_its_own(inference, overfit):
  _, _, _, maps, _, _ = inference
  out = overfit["outputs"]  # step 0: the initial variables, config fusion.train = roi+rpn
  expected_det = np.concatenate(
    [
      np.log(m["fused_objectness"]["roi+rpn"][:1] / (1 - m["fused_objectness"]["roi+rpn"][:1]))
      for m in maps.values()
    ],
    axis=None,
  )
  np.testing.assert_allclose(out["rpn_det"]["logits"][0], expected_det, rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(
    out["rpn_mask"]["logits"][0], _flat(maps, "rpn_mask_logits")[0], rtol=1e-4, atol=1e-5
  )


def test_anchor_targets_and_samples(tiny, overfit):
  _, model, _ = tiny
  out, batch = overfit["outputs"], hand_batch()
  labels = out["rpn_targets"]["labels"][0]
  anchors = np.concatenate(model.anchors())
  iou = np.asarray(box_ops.iou(jnp.asarray(batch["boxes"][0][:3]), jnp.asarray(anchors)))
  best = iou.max(axis=0)
  # Positives: IoU >= 0.7 or the best anchor of some box; negatives: IoU < 0.3 and not a best.
  is_best = np.any(iou == iou.max(axis=1, keepdims=True), axis=0)
  np.testing.assert_array_equal(labels == 1, (best >= 0.7) | is_best)
  np.testing.assert_array_equal(labels == 0, (best < 0.3) & ~is_best)
  # Positive anchors' targets decode back to their best box.
  pos = np.flatnonzero(labels == 1)
  decoded = box_ops.decode(anchors[pos], out["rpn_targets"]["deltas"][0][pos])
  np.testing.assert_allclose(decoded, batch["boxes"][0][iou[:, pos].argmax(0)], atol=1e-3)
  for name in ("rpn_det", "rpn_mask"):
    p, n = out[name]["positive"][0], out[name]["negative"][0]
    assert p.sum() == min(len(pos), 128) and p.sum() + n.sum() == 256
    assert np.all(labels[p] == 1) and np.all(labels[n] == 0)
  assert np.any(out["rpn_det"]["negative"][0] != out["rpn_mask"]["negative"][0])  # own keys


def test_roi_sampling_in_the_training_forward(overfit):
  roi = overfit["outputs"]["roi"]
  sampled, fg = roi["sampled"][0], roi["foreground"][0]
  assert sampled.sum() == 32  # 100 proposals + 3 boxes are enough candidates
  # The appended ground truth boxes are foreground; at most 0.25 * 32 ROIs are.
  assert 3 <= fg.sum() <= 8
  assert set(roi["gt_classes"][0][fg].tolist()) <= {1, 3}
  assert np.all(roi["gt_classes"][0][~fg] == 0) and np.all(roi["regression_targets"][0][~fg] == 0)
  assert roi["cls_logits"].shape == (1, 32, 9) and roi["deltas"].shape == (1, 32, 32)
  assert 0 <= overfit["parts"]["fg_roi_fraction"] <= 1


def _norm(tree):
  return float(np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(tree))))


def test_gradients_reach_both_rpns_and_both_segmentation_heads(overfit):
  grads = overfit["grads"]
  for name in ("rpn_det", "rpn_mask", "semantic_head", "class_agnostic", "box_head", "fpn"):
    assert _norm(grads[name]) > 1e-6, name
  # The stride-4 map's predictor and every level's projection into it learn.
  for name in ("map_conv", "map_logit", *(f"{level}_prior" for level in fpn.LEVELS)):
    assert _norm(grads["class_agnostic"][name]) > 1e-6, name
  assert _norm(grads["rpn_mask"]["deltas"]) > 0 and _norm(grads["rpn_det"]["deltas"]) > 0
  # freeze_at = 2: stem and res2 get no gradient, res5 does.
  backbone = grads["backbone"]
  assert _norm(backbone["conv1"]) == 0 and _norm(backbone["layer1"]) == 0
  assert _norm(backbone["layer4"]) > 0


def test_overfits_one_batch(overfit):
  history = overfit["history"]
  assert np.all(np.isfinite(history))
  assert np.mean(history[-5:]) * 3 <= history[0], history


def _batch_shapes(config, b=1):
  h, w = config.data.image_size
  n = config.data.max_instances
  s = jax.ShapeDtypeStruct
  return {
    "image": s((b, h, w, 3), jnp.float32),
    "semantic": s((b, h, w), jnp.int32),
    "instance_map": s((b, h, w), jnp.int32),
    "crowd": s((b, h, w), bool),
    "boxes": s((b, n, 4), jnp.float32),
    "classes": s((b, n), jnp.int32),
    "valid": s((b, n), bool),
  }


def _abstract(config):
  """eval_shape of variables, inference outputs and the training loss (no compilation)."""
  model = api.create_model(config)
  variables = jax.eval_shape(lambda k: api.init_variables(config, k), jax.random.key(0))
  batch = _batch_shapes(config)
  outputs = jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, batch["image"])

  def train_loss(v, b):
    out = model.apply(v, b["image"], targets=b, train=True, rngs={"sampling": jax.random.key(0)})
    return out, losses.segrpn_loss(out, b, config)

  train_out, (total, parts) = jax.eval_shape(train_loss, variables, batch)
  return variables, outputs, train_out, total, parts


def test_resnet50_shapes_at_512x1024():
  config = default.get_config()
  config.model.pretrained = ""
  variables, out, train_out, total, parts = _abstract(config)
  n = 3 * (128 * 256 + 64 * 128 + 32 * 64 + 16 * 32 + 8 * 16)
  assert out["detections"]["boxes"].shape == (1, 100, 4)
  assert out["proposals"]["boxes"].shape == (1, 1000, 4)
  assert out["semantic_logits"].shape == (1, 128, 256, 19)
  assert out["semantic_labels"].shape == (1, 512, 1024)
  assert out["semantic_foreground_prob"].shape == (1, 512, 1024)
  assert out["class_agnostic_prob"].shape == (1, 512, 1024)
  assert train_out["class_agnostic_map_logits"].shape == (1, 128, 256)
  assert [x.shape for x in out["class_agnostic_logits"]] == [
    (1, 128, 256),
    (1, 64, 128),
    (1, 32, 64),
    (1, 16, 32),
    (1, 8, 16),
  ]
  assert out["rpn_logits"].shape == (1, n)
  assert train_out["proposals"]["boxes"].shape == (1, 2000, 4)
  assert train_out["rpn_det"]["deltas"].shape == (1, n, 4)
  assert train_out["rpn_mask"]["positive"].shape == (1, n)
  assert train_out["roi"]["cls_logits"].shape == (1, 512, 9)
  assert train_out["roi"]["deltas"].shape == (1, 512, 32)
  assert total.shape == () and total.dtype == jnp.float32
  assert {"rpn_mask/objectness", "class_agnostic", "class_agnostic_map", "semantic"} <= set(parts)
  assert variables["params"]["rpn_det"]["conv"]["kernel"].shape == (3, 3, 256, 256)
  assert variables["params"]["box_head"]["fc0"]["kernel"].shape == (7 * 7 * 256, 1024)


def test_class_agnostic_channels_narrows_the_module_and_rpn_masks_input_only():
  config = tiny_config()
  config.model.class_agnostic_channels = 8
  params = jax.eval_shape(lambda k: api.init_variables(config, k), jax.random.key(0))["params"]
  c = config.model.fpn_channels
  for level in ("P2", "P6"):
    ca = params["class_agnostic"]
    assert ca[f"{level}_conv0"]["Conv_0"]["kernel"].shape == (3, 3, c, 8)
    assert ca[f"{level}_logit"]["kernel"].shape == (1, 1, 8, 1)
    assert ca[f"{level}_prior"]["kernel"].shape[2] == 8
  # RPN_mask reads the narrow features and keeps the FPN's width, as RPN_det, for the fusion.
  assert params["rpn_mask"]["conv"]["kernel"].shape == (3, 3, 8, c)
  assert params["rpn_det"]["conv"]["kernel"].shape == (3, 3, c, c)


def test_baseline_and_plain_faster_rcnn_have_no_extra_variables():
  full = tiny_config()
  baseline = tiny_config()
  baseline.model.class_agnostic = False
  baseline.model.fusion.train = baseline.model.fusion.inference = "none"
  v_full, _, _, _, _ = _abstract(full)
  v_base, out, _, _, parts = _abstract(baseline)
  assert set(v_full["params"]) - set(v_base["params"]) == {"class_agnostic", "rpn_mask"}
  for name in v_base["params"]:  # everything else is identical
    assert jax.tree.map(lambda x: x.shape, v_base["params"][name]) == jax.tree.map(
      lambda x: x.shape, v_full["params"][name]
    )
  assert "rpn_mask/objectness" not in parts and "class_agnostic" not in parts
  assert "class_agnostic_map" not in parts
  assert "class_agnostic_logits" not in out and "class_agnostic_prob" not in out
  assert out["semantic_foreground_prob"].shape == (1, H, W)
  # Every normalisation parameter (the ResNet's and the heads' GroupNorms) skips weight decay,
  # every conv / dense parameter has it.
  labels = optim.param_labels(v_full["params"], lambda path: False)
  for path, label in jax.tree_util.tree_flatten_with_path(labels)[0]:
    names = [k.key for k in path]
    is_norm = "GroupNorm" in names[-2] or names[-2] in ("bn1", "bn2", "downsample_bn")
    assert label == ("no_decay" if is_norm else "decay"), names
  faster_rcnn = tiny_config()
  faster_rcnn.model.class_agnostic = faster_rcnn.model.semantic_head = False
  faster_rcnn.model.fusion.train = faster_rcnn.model.fusion.inference = "none"
  v, out, _, _, parts = _abstract(faster_rcnn)
  assert set(v["params"]) == {"backbone", "fpn", "rpn_det", "box_head"}
  assert "semantic" not in parts and "semantic_logits" not in out
  # A fusion needs RPN_mask.
  model = api.create_model(baseline)
  image = jax.ShapeDtypeStruct((1, H, W, 3), jnp.float32)
  with pytest.raises(ValueError, match="class_agnostic"):
    jax.eval_shape(lambda v, x: model.apply(v, x, fusion="roi"), v_base, image)
  predict = functools.partial(model.apply, method=SegRPN.predict_fusions)
  with pytest.raises(ValueError, match=r"'roi'.*class_agnostic"):
    jax.eval_shape(lambda v, x: predict(v, x, ("none", "roi")), v_base, image)
  out = jax.eval_shape(lambda v, x: predict(v, x, ("none",)), v_base, image)
  assert set(out) == {"fusions", "semantic_logits", "semantic_labels", "semantic_foreground_prob"}
  # Without a semantic head the class-agnostic map keeps its projections and predictor.
  no_semantic = tiny_config()
  no_semantic.model.semantic_head = False
  v = jax.eval_shape(lambda k: api.init_variables(no_semantic, k), jax.random.key(0))
  assert "semantic_head" not in v["params"]
  assert jax.tree.map(lambda x: x.shape, v["params"]["class_agnostic"]) == jax.tree.map(
    lambda x: x.shape, v_full["params"]["class_agnostic"]
  )


def test_bfloat16_computes_in_bf16_with_float32_params_and_loss():
  config = tiny_config()
  config.model.dtype = "bfloat16"
  variables, out, _, total, _ = _abstract(config)
  assert {x.dtype for x in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.float32)}
  assert total.dtype == jnp.float32 and out["semantic_logits"].dtype == jnp.float32
  model = api.create_model(config)
  jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(
    variables, jax.ShapeDtypeStruct((1, H, W, 3), jnp.float32)
  )
  conv_dtypes = {
    e.invars[0].aval.dtype
    for e in _all_eqns(jaxpr.jaxpr)
    if e.primitive.name == "conv_general_dilated"
  }
  assert conv_dtypes == {jnp.dtype(jnp.bfloat16)}


def _all_eqns(jaxpr):
  """Every equation of a jaxpr, including those of nested jaxprs (jit, while, cond)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, tuple | list) else (param,):
        if isinstance(sub, jax.extend.core.ClosedJaxpr):
          yield from _all_eqns(sub.jaxpr)
        elif isinstance(sub, jax.extend.core.Jaxpr):
          yield from _all_eqns(sub)


def test_initialize_creates_exactly_the_variables_of_call(tiny):
  _, model, _ = tiny
  image = jnp.zeros((1, H, W, 3))
  via_call = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), image)
  via_initialize = jax.eval_shape(
    functools.partial(model.init, method=SegRPN.initialize), jax.random.key(0), image
  )
  assert jax.tree.map(lambda x: (x.shape, x.dtype), via_call) == jax.tree.map(
    lambda x: (x.shape, x.dtype), via_initialize
  )


def test_missing_pretrained_file_names_the_config_key():
  config = tiny_config()
  config.model.pretrained = "/nonexistent/resnet18.npz"
  with pytest.raises(FileNotFoundError, match=r"config\.model\.pretrained"):
    api.init_variables(config, jax.random.key(0))


@pytest.mark.parametrize("norm", ["frozen_bn", "bn"])
def test_pretrained_backbone_is_merged(tmp_path, norm):
  config = tiny_config()
  config.model.width_multiplier, config.model.norm = 1.0, norm
  shapes = jax.eval_shape(lambda k: api.init_variables(config, k), jax.random.key(0))
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  # A torchvision-keyed state dict with random values, written by the layout of a
  # frozen_bn ResNet-18 (torchvision's OIHW conv weights).
  frozen = tiny_config()
  frozen.model.width_multiplier, frozen.model.norm = 1.0, "frozen_bn"
  layout = jax.eval_shape(lambda k: api.init_variables(frozen, k), jax.random.key(0))
  rs = np.random.RandomState(0)
  state, expected = {}, {}
  for collection in ("params", "frozen_bn"):
    flat = jax.tree_util.tree_flatten_with_path(layout[collection]["backbone"])[0]
    for key_path, leaf in flat:
      path = (collection, *(k.key for k in key_path))
      value = rs.randn(*leaf.shape).astype(np.float32)
      if path[-1] == "var":
        value = np.abs(value) + 0.5
      expected[path] = value
      name = pretrained.torchvision_key(path)
      state[name] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
  file = tmp_path / "r18.npz"
  np.savez(file, **state)
  config.model.pretrained = str(file)
  merged = pretrained.merge_pretrained_backbone(variables, config)
  for (collection, *path), value in expected.items():
    if norm == "bn" and collection == "frozen_bn":
      collection = "batch_stats" if path[-1] in ("mean", "var") else "params"
    node = merged[collection]["backbone"]
    for key in path:
      node = node[key]
    np.testing.assert_array_equal(node, value)
  assert _norm(merged["params"]["rpn_det"]) == 0  # only the backbone is replaced


def test_sample_rois_hand_case():
  gt = np.array([[10, 10, 50, 50], [60, 10, 100, 40], [0, 0, 0, 0]], np.float32)
  gt_classes = np.array([3, 5, 0], np.int32)
  gt_valid = np.array([True, True, False])
  proposals = np.array(
    [
      [10, 10, 50, 50],  # = gt 0: IoU 1
      [60, 10, 100, 32],  # IoU 22/30 with gt 1: foreground
      [10, 10, 50, 22],  # IoU 0.3 with gt 0: background
      [0, 60, 20, 80],  # no overlap: background
      [60, 10, 100, 40],  # = gt 1 but invalid: never sampled
    ],
    np.float32,
  )
  valid = np.array([True, True, True, True, False])
  sample_rois = jax.jit(roi_heads.sample_rois, static_argnums=(6, 7, 8, 9))  # one compile
  out = sample_rois(
    proposals, valid, gt, gt_classes, gt_valid, jax.random.key(0), 8, 0.5, 0.5, (10, 10, 5, 5)
  )
  sampled, fg = np.asarray(out["sampled"]), np.asarray(out["foreground"])
  # Foreground: proposals 0, 1 and the two appended boxes (4 <= 8 * 0.5); background: 2, 3.
  assert fg.sum() == 4 and (sampled & ~fg).sum() == 2 and sampled.sum() == 6
  rois = np.asarray(out["boxes"])
  got_fg = sorted(map(tuple, rois[fg].tolist()))
  assert got_fg == sorted(map(tuple, [proposals[0], proposals[1], gt[0], gt[1]]))
  assert sorted(map(tuple, rois[sampled & ~fg].tolist())) == sorted(
    map(tuple, proposals[2:4].tolist())
  )
  classes = np.asarray(out["gt_classes"])
  targets = np.asarray(out["regression_targets"])
  for box, cls, target in zip(rois[fg], classes[fg], targets[fg], strict=True):
    k = 0 if box[0] == 10 else 1
    assert cls == gt_classes[k]
    np.testing.assert_allclose(target, box_ops.encode(box, gt[k], (10, 10, 5, 5)), atol=1e-5)
  assert np.all(classes[~fg] == 0)
  assert float(out["num_fg_proposals"]) == 2 and float(out["num_valid_proposals"]) == 4


def test_postprocess_hand_case():
  k = 8
  proposals = np.array(
    [
      [10, 10, 50, 50],
      [12, 10, 52, 50],  # IoU 0.9 with 0, same class: suppressed
      [12, 10, 52, 50],  # same box, another class: kept
      [100, 60, 130, 90],  # scores below 0.05: dropped
      [200, 60, 230, 90],  # invalid proposal
      [240, 100, 300, 140],  # crosses the right border: clipped to 256
    ],
    np.float32,
  )
  valid = np.array([True, True, True, True, False, True])
  logits = np.full((6, k + 1), -10.0, np.float32)
  logits[:, 0] = 0.0
  logits[0, 3], logits[1, 3], logits[2, 5], logits[4, 2], logits[5, 1] = 5.0, 4.0, 3.0, 9.0, 2.0
  logits[3, 0] = 10.0
  deltas = np.zeros((6, 4 * k), np.float32)
  postprocess = jax.jit(roi_heads.postprocess, static_argnums=(4, 5, 6, 7, 8))  # one compile
  out = jax.device_get(
    postprocess(logits, deltas, proposals, valid, (H, W), (10, 10, 5, 5), 0.05, 0.5, 5)
  )
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  assert out["valid"].tolist() == [True, True, True, False, False]
  assert out["classes"][:3].tolist() == [3, 5, 1]
  np.testing.assert_allclose(out["scores"][:3], [probs[0, 3], probs[2, 5], probs[5, 1]], rtol=1e-5)
  np.testing.assert_allclose(out["boxes"][:3], [proposals[0], proposals[2], [240, 100, 256, 128]])
  assert np.all(out["boxes"][3:] == 0)
