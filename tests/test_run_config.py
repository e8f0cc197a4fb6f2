"""The config is checked once at start and every problem is reported together."""

import pytest

from segrpn_jax import run_config
from segrpn_jax.configs import baseline, default, segrpn


def test_every_problem_is_reported_together_with_its_key():
  c = default.synthetic(default.get_config())
  c.model.norm = "layer"
  c.model.dtype = "float16"
  c.model.scale_case = "case9"
  c.model.fusion.inference = "both"
  c.model.backbone = "resnet7"
  c.train.batch_size = 3  # two host devices in the tests
  with pytest.raises(run_config.ConfigError) as e:
    run_config.validate(c, check_files=False)
  message = str(e.value)
  assert len(e.value.problems) == 6
  for key in (
    "config.model.norm = 'layer'",
    "config.model.dtype = 'float16'",
    "config.model.scale_case = 'case9'",
    "config.model.fusion.inference = 'both'",
    "config.model.backbone = 'resnet7'",
    "config.train.batch_size=3",
  ):
    assert key in message


def test_a_fusion_on_the_baseline_is_refused():
  c = baseline.get_config("synthetic")
  c.model.fusion.inference = "roi"
  with pytest.raises(run_config.ConfigError, match=r"fusion.inference = 'roi' needs RPN_mask"):
    run_config.validate(c, check_files=False)


def test_a_fusion_without_rpn_mask_is_refused_before_the_model_is_built():
  c = segrpn.get_config("synthetic,no_rpn_mask")
  run_config.validate(c, check_files=False)  # fusion 'none': accepted
  c.model.fusion.train = "rpn"
  with pytest.raises(run_config.ConfigError) as e:
    run_config.validate(c, check_files=False)
  assert e.value.problems == [
    "config.model.fusion.train = 'rpn' needs RPN_mask, but config.model.rpn_mask = False "
    "(SegRPN without RPN_mask); set the fusion to 'none'."
  ]


def test_a_run_saved_before_rpn_mask_existed_has_rpn_mask():
  saved, new = segrpn.get_config("synthetic"), segrpn.get_config("synthetic")
  del saved.model["rpn_mask"]
  assert run_config.differences(saved, new, ("model",)) == []
  new.model.rpn_mask = False
  assert run_config.differences(saved, new, ("model",)) == [("model.rpn_mask", True, False)]


def test_a_run_saved_before_class_agnostic_channels_existed_has_the_fpn_width():
  saved, new = segrpn.get_config("synthetic"), segrpn.get_config("synthetic")
  del saved.model["class_agnostic_channels"]
  assert run_config.differences(saved, new, ("model",)) == []
  new.model.class_agnostic_channels = 16
  assert run_config.differences(saved, new, ("model",)) == [
    ("model.class_agnostic_channels", None, 16)
  ]
  new.model.class_agnostic_channels = 0
  with pytest.raises(run_config.ConfigError, match="class_agnostic_channels = 0 must be > 0"):
    run_config.validate(new, check_files=False)


def test_a_missing_weights_file_names_the_key(tmp_path):
  c = default.synthetic(default.get_config())
  c.data.data_dir = str(tmp_path)
  c.model.pretrained = str(tmp_path / "missing.npz")
  with pytest.raises(run_config.ConfigError, match=r"config\.model\.pretrained = .*missing\.npz"):
    run_config.validate(c)


def test_the_paper_configs_pass_without_files():
  for c in (default.get_config(), baseline.get_config()):
    c.train.batch_size = c.eval.batch_size = 2  # the paper's batch 1, on the tests' two devices
    run_config.validate(c, check_files=False)


def test_every_bad_train_eval_and_data_value_is_named():
  c = default.synthetic(default.get_config())
  c.train.batch_size = c.eval.batch_size = 2
  t = c.train
  t.base_lr, t.warmup_start_lr, t.decay_factor = -0.01, -0.001, 0.0
  t.num_steps, t.warmup_steps, t.decay_steps = 100, 100, (50, 200)
  t.momentum, t.weight_decay = 1.0, -1e-4
  t.checkpoint_every_steps, t.keep_checkpoints, t.eval_every_steps, t.log_every_steps = 0, 0, 0, 0
  c.eval.max_proposals, c.eval.num_image_summaries = 0, -1
  c.data.shuffle_buffer, c.data.prefetch = 0, 0
  c.data.train_crop_size = (300, 128)
  with pytest.raises(run_config.ConfigError) as e:
    run_config.validate(c, check_files=False)
  expected = [
    "config.data.shuffle_buffer = 0 must be > 0.",
    "config.data.prefetch = 0 must be > 0.",
    "config.data.train_crop_size = (300, 128) must be (height, width), positive and at most "
    "config.data.image_size = (256, 512); or () to train on the whole image.",
    "config.train.base_lr = -0.01 must be > 0.",
    "config.train.decay_factor = 0.0 must be > 0.",
    "config.train.checkpoint_every_steps = 0 must be > 0.",
    "config.train.keep_checkpoints = 0 must be > 0.",
    "config.train.eval_every_steps = 0 must be > 0.",
    "config.train.log_every_steps = 0 must be > 0.",
    "config.train.momentum = 1.0 must be in [0, 1) (the paper: 0.9).",
    "config.train.warmup_start_lr = -0.001 must be >= 0.",
    "config.train.weight_decay = -0.0001 must be >= 0.",
    "config.train.warmup_steps = 100 must be in [0, config.train.num_steps = 100); shorten the "
    "warm-up or lengthen the run.",
    "config.train.decay_steps = (50, 200) has (50, 200) outside the run after its warm-up "
    "[100, 100] (config.train.warmup_steps, num_steps); move them inside, or set decay_steps = "
    "() for no decay.",
    "config.eval.max_proposals = 0 must be > 0.",
    "config.eval.num_image_summaries = -1 must be >= 0.",
  ]
  assert e.value.problems == expected


def test_decay_steps_must_increase():
  c = default.synthetic(default.get_config())
  c.train.batch_size = c.eval.batch_size = 2
  c.train.decay_steps = (720, 600)
  with pytest.raises(run_config.ConfigError, match=r"decay_steps = \(720, 600\) must increase"):
    run_config.validate(c, check_files=False)


def test_an_unknown_key_names_the_closest_existing_ones():
  c = default.get_config()
  assert run_config.closest_keys(c, "model.rpn.nms_threshol") == [
    "model.rpn.nms_threshold", "model.rpn.iou_thresholds", "model.roi.nms_threshold"
  ]  # fmt: skip
  assert run_config.closest_keys(c, "trian.base_lr")[0] == "train.base_lr"
  assert run_config.unknown_key_message(c, "model.foo", "configs/case1.py") == (
    "config.model.foo is not a key of the config (configs/case1.py); the closest existing: "
    "config.model.roi, config.model.fusion, config.model.norm. Fix the key's name."
  )
