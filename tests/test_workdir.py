"""A workdir belongs to one run: training with another model is refused before anything is
written, and --mode=eval takes the run's own config with only evaluation-time keys changed."""

import os

import pytest
from absl import flags

from segrpn_jax import checkpointing, main, run_config, train
from tests.train_config import tiny_train_config


def _listing(workdir) -> dict[str, bytes]:
  """Every file under `workdir` with its content."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


@pytest.fixture
def run_workdir(tmp_path):
  """A workdir whose run was started with the tiny config (only its config.json is needed)."""
  config = tiny_train_config(str(tmp_path / "tfds"))
  workdir = str(tmp_path / "run")
  checkpointing.save_config(workdir, config)
  return config, workdir


def test_training_another_model_in_the_workdir_is_refused_and_changes_nothing(run_workdir):
  config, workdir = run_workdir
  before = _listing(workdir)
  config.model.fpn_channels = 8
  config.data.image_size = (32, 64)
  config.model.fusion.inference = "none"  # an inference-time choice: not reported
  with pytest.raises(run_config.WorkdirError) as e:
    train.train_and_evaluate(config, workdir)
  message = str(e.value)
  assert "config.model.fpn_channels: 16 (saved) vs 8 (new)" in message
  assert "config.data.image_size: (64, 128) (saved) vs (32, 64) (new)" in message
  assert "2 key(s) differ" in message and "new --workdir" in message
  assert _listing(workdir) == before  # config.json untouched, no events file, no checkpoints/


def test_resuming_with_a_longer_schedule_is_allowed(run_workdir):
  config, workdir = run_workdir
  config.train.num_steps = 10
  config.train.base_lr = 0.5
  config.model.fusion.inference = "none"
  run_config.check_workdir(workdir, config)
  run_config.check_workdir(os.path.join(workdir, "fresh"), config)  # no config.json: any config


def test_differences_lists_each_key_with_both_values():
  a = tiny_train_config("/data")
  b = tiny_train_config("/data")
  b.model.roi.fc_dim = 64
  b.model.pretrained = "x.npz"
  b.train.num_steps = 7
  assert run_config.differences(a, b, ("model",), exclude=("model.pretrained",)) == [
    ("model.roi.fc_dim", 32, 64)
  ]
  assert run_config.differences(a, b, ("train",)) == [("train.num_steps", 2, 7)]
  # config.json's lists compare equal to the config's tuples.
  assert run_config.differences(a, a, run_config.STATE_KEYS) == []


def test_evaluation_takes_the_runs_config_and_only_eval_keys_from_the_command_line(run_workdir):
  config, workdir = run_workdir
  cli = tiny_train_config("/elsewhere/tfds")
  cli.eval.batch_size = 4
  cli.eval.max_proposals = 32
  cli.data.eval_split = "train"
  cli.model.fusion.inference = "none"
  cli.train.num_steps = 50  # not an evaluation key: the run's value is used
  cli.model.pretrained = "other.npz"  # neither: the run's value is used
  merged = run_config.for_evaluation(workdir, cli)
  assert merged.data.data_dir == "/elsewhere/tfds"
  assert (merged.eval.batch_size, merged.eval.max_proposals) == (4, 32)
  assert merged.data.eval_split == "train"
  assert merged.model.fusion.inference == "none"
  assert merged.train.num_steps == config.train.num_steps
  assert merged.model.pretrained == config.model.pretrained
  assert tuple(merged.data.image_size) == tuple(config.data.image_size)
  run_config.validate(merged, check_files=False)


def test_evaluation_with_another_model_is_refused_and_changes_nothing(tmp_path):
  data_dir = str(tmp_path / "tfds")
  saved = tiny_train_config(data_dir)  # the run was started with another backbone and dataset
  saved.model.backbone = "resnet34"
  saved.data.dataset = "synthetic_streets"
  workdir = str(tmp_path / "run")
  checkpointing.save_config(workdir, saved)
  before = _listing(workdir)
  argv = ["main", f"--config=tests/train_config.py:{data_dir}", f"--workdir={workdir}",
          "--mode=eval"]  # fmt: skip
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  try:
    with pytest.raises(run_config.WorkdirError) as e:
      main.main(argv[:1])
  finally:
    flags.FLAGS.unparse_flags()
  message = str(e.value)
  assert "config.model.backbone: 'resnet34' (saved) vs 'resnet18' (new)" in message
  assert "config.data.dataset: 'synthetic_streets' (saved) vs 'synthetic_streets/tiny'" in message
  assert "2 key(s)" in message
  assert _listing(workdir) == before


def test_an_inference_fusion_the_run_cannot_run_is_refused_on_the_merged_config(tmp_path):
  config = tiny_train_config(str(tmp_path / "tfds"))
  config.model.class_agnostic = False  # the baseline: no RPN_mask
  config.model.fusion.train = config.model.fusion.inference = "none"
  workdir = str(tmp_path / "run")
  checkpointing.save_config(workdir, config)
  cli = tiny_train_config(str(tmp_path / "tfds"))
  cli.model.class_agnostic = False
  cli.model.fusion.train = "none"
  cli.model.fusion.inference = "rpn"
  merged = run_config.for_evaluation(workdir, cli)
  with pytest.raises(run_config.ConfigError, match=r"fusion.inference = 'rpn' needs RPN_mask"):
    run_config.validate(merged, check_files=False)
