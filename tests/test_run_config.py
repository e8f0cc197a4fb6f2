"""The config is checked once at start and every problem is reported together."""

import pytest

from segrpn_jax import run_config
from segrpn_jax.configs import baseline, default


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
