"""The main job on a tiny synthetic config: a 2-step train_and_evaluate (the run tests/conftest.py
shares), --mode=eval on its workdir, 1 vs 2 devices, the non-finite loss guard, an unwritable
checkpoints folder and a damaged checkpoint. (Resuming after SIGTERM: tests/test_robustness.py.)"""

import functools
import glob
import json
import logging
import math
import os
import shutil
import time

import jax
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from jax.sharding import Mesh

from segrpn_jax import api, checkpointing, errors, evaluate, input_pipeline, main, parallel, train
from segrpn_jax import state as state_lib
from tests.train_config import tiny_train_config


@pytest.fixture(scope="module")
def data_dir(tiny_run):
  return tiny_run[0]


@pytest.fixture(scope="module")
def trained(tiny_run, tmp_path_factory):
  """A copy of the shared 2-step run (tests/conftest.py): checkpoints every step, logs every
  step, evaluates at the end."""
  data_dir, shared, results = tiny_run
  workdir = str(tmp_path_factory.mktemp("run") / "run")
  shutil.copytree(shared, workdir)
  return tiny_train_config(data_dir), workdir, dict(results)


def _assert_same_metrics(a: dict, b: dict):
  assert a.keys() == b.keys()
  for key in a:
    assert (math.isnan(a[key]) and math.isnan(b[key])) or a[key] == pytest.approx(b[key]), key


def _scalars(workdir: str) -> dict[str, dict[int, float]]:
  """Every scalar summary of a run's TensorBoard event files: tag -> step -> value."""
  out: dict = {}
  for path in glob.glob(f"{workdir}/events.out.tfevents.*"):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name in ("scalars", ""):
          tensor = tf.make_ndarray(value.tensor) if value.HasField("tensor") else value.simple_value
          out.setdefault(value.tag, {})[event.step] = float(np.asarray(tensor))
  return out


def test_two_steps_write_checkpoints_metrics_and_summaries(trained):
  config, workdir, results = trained
  manager = checkpointing.create_manager(workdir, config)
  assert sorted(manager.all_steps()) == [1, 2]
  with open(f"{workdir}/metrics_2.json") as f:
    _assert_same_metrics(json.load(f), results)
  for key in ("mAP50", "AP50/car", "AR@64", "mIoU", "IoU/road", "pixel_accuracy", "mIoU*",
              "mIoU*/semantic"):  # fmt: skip
    assert 0.0 <= results[key] <= 1.0, key
  # Trained and evaluated with roi+rpn: every fusion with parts switched off is scored too, and
  # the unprefixed detection metrics are roi+rpn's.
  for fusion in ("roi+rpn", "roi", "rpn", "none"):
    for key in ("mAP50", "AP50/car", "AR@64"):
      assert 0.0 <= results[f"inference/{fusion}/{key}"] <= 1.0, (fusion, key)
  for key in ("mAP50", "AR@64"):
    assert results[key] == results[f"inference/roi+rpn/{key}"]
  assert any(k.startswith("AP50/L") for k in results) and not any(
    "without_fusion" in k for k in results
  )
  assert {"ground_truth.json", "detections.json", "proposals.json"} <= set(
    os.listdir(f"{workdir}/eval_2")
  )
  scalars = _scalars(workdir)
  for part in ("loss", "rpn_det/objectness", "rpn_mask/box", "roi/cls", "semantic",
               "class_agnostic", "fg_roi_fraction", "grad_norm"):  # fmt: skip
    assert set(scalars[f"train/{part}"]) == {1, 2}, part
    assert all(math.isfinite(v) for v in scalars[f"train/{part}"].values()), part
  # The learning rate logged with step s is the one step s used: schedule(s - 1).
  assert scalars["train/learning_rate"][1] == pytest.approx(config.train.warmup_start_lr)
  assert scalars["train/learning_rate"][2] == pytest.approx(config.train.base_lr)
  assert 0.0 <= scalars["train/fg_roi_fraction"][2] <= 1.0
  assert scalars["eval/mAP50"][2] == pytest.approx(results["mAP50"])


def test_eval_mode_on_the_trained_workdir(trained, data_dir, tmp_path):
  config, workdir, results = trained
  argv = ["main", f"--workdir={workdir}", "--mode=eval"]  # the config is the run's own
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  try:
    main.main(argv[:1])
  finally:
    flags.FLAGS.unparse_flags()
  with open(f"{workdir}/metrics_2.json") as f:  # rewritten by the eval run, same numbers
    _assert_same_metrics(json.load(f), results)
  loaded_config, model, variables = api.load(workdir)
  assert loaded_config.data.image_size == config.data.image_size
  _assert_same_metrics(
    evaluate.evaluate_variables(
      loaded_config, model, variables, input_pipeline.create_eval_dataset(loaded_config), step=2
    ),
    results,
  )


def test_one_and_two_devices_give_the_same_loss(data_dir):
  assert jax.device_count() == 2, "tests/conftest.py asks XLA for two host devices"
  config = tiny_train_config(data_dir)
  model = api.create_model(config)
  # On the host: each step gets its own device copy, as the step donates its state.
  state = jax.device_get(state_lib.init_state(config, jax.random.PRNGKey(0)))
  batch = next(input_pipeline.create_train_iterator(config))
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = Mesh(np.asarray(devices), ("data",))
    # Training's own jitted step: on two devices, the shared run's program (from the cache).
    step = train.jit_train_step(model, config, mesh)
    sharded = parallel.shard_batch(batch, parallel.data_sharding(mesh), train.BATCH_KEYS)
    new_state, metrics = step(jax.device_put(state, parallel.replicated(mesh)), sharded)
    results.append((jax.device_get(metrics), jax.device_get(new_state.params)))
  (metrics_1, params_1), (metrics_2, params_2) = results
  for key in ("loss", "rpn_det/objectness", "roi/cls", "semantic", "grad_norm"):
    np.testing.assert_allclose(metrics_1[key], metrics_2[key], rtol=1e-5, err_msg=key)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4, atol=1e-7),
               params_1, params_2)  # fmt: skip


def test_traced_programs_are_kept_per_state_config(data_dir):
  config = tiny_train_config(data_dir)
  other = tiny_train_config(data_dir + "/elsewhere")  # another data folder, a longer schedule
  other.train.num_steps, other.train.checkpoint_every_steps = 100, 50
  assert state_lib.state_config(other) == state_lib.state_config(config)
  assert "num_steps" not in state_lib.state_config(config).train
  model, mesh = api.create_model(config), parallel.make_mesh()
  assert train.jit_train_step(model, other, mesh) is train.jit_train_step(model, config, mesh)
  assert state_lib.abstract_state(other, mesh) is state_lib.abstract_state(config, mesh)
  faster = tiny_train_config(data_dir)
  faster.train.base_lr *= 2  # the step's program changes with it
  assert train.jit_train_step(model, faster, mesh) is not train.jit_train_step(model, config, mesh)


def test_training_on_crops_evaluates_the_whole_image(data_dir, tmp_path):
  config = tiny_train_config(data_dir)
  config.data.train_crop_size = (32, 64)  # a quarter of the 64x128 images
  config.train.num_steps, config.train.warmup_steps = 1, 0
  assert state_lib.state_config(config).data.image_size == (32, 64)
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(config, workdir)
  # The run's evaluation is the whole-image model's on the trained weights: a model loaded from
  # the checkpoint is built at 64x128 and scores the split to the same numbers.
  loaded_config, model, variables, step = api.load_checkpoint(workdir)
  assert (model.image_size, step) == ((64, 128), 1)
  _assert_same_metrics(
    evaluate.evaluate_variables(
      loaded_config, model, variables, input_pipeline.create_eval_dataset(loaded_config), step=1
    ),
    results,
  )


def test_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(
  data_dir, tmp_path, monkeypatch
):
  config = tiny_train_config(data_dir)
  config.train.num_steps = 3
  real = input_pipeline.create_train_iterator

  def poisoned(config, start_step=0, **kwargs):
    for i, batch in enumerate(real(config, start_step, **kwargs), start=start_step + 1):
      if i == 3:
        batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
      yield batch

  monkeypatch.setattr(input_pipeline, "create_train_iterator", poisoned)
  with pytest.raises(FloatingPointError, match="at step 3"):
    train.train_and_evaluate(config, str(tmp_path))
  assert checkpointing.create_manager(str(tmp_path), config).latest_step() == 2


def test_a_missing_eval_step_is_one_readable_block(trained, capsys):
  _, workdir, _ = trained
  flags.FLAGS.unparse_flags()
  try:
    argv = flags.FLAGS(["main", f"--workdir={workdir}", "--mode=eval", "--step=7"])
    status = errors.run(main.main, argv[:1])
  finally:
    flags.FLAGS.unparse_flags()
  err = capsys.readouterr().err
  assert status == errors.EXIT_USER_ERROR
  assert err.startswith(f"error: no checkpoint of step 7 in {workdir}/checkpoints: it holds "
                        "steps [1, 2].")  # fmt: skip
  assert "Traceback" not in err


def _unwritable_at(step: int, folder: str):
  """A train iterator factory that puts a file in place of `folder` (no write lands there, for
  root as for anyone) when the batch of `step` is requested; the folder is kept aside."""
  real = input_pipeline.create_train_iterator

  def create(config, start_step=0, **kwargs):
    for i, batch in enumerate(real(config, start_step, **kwargs), start=start_step + 1):
      if i == step:
        os.rename(folder, folder + ".kept")
        open(folder, "w").close()
      yield batch

  return create


def test_an_unwritable_checkpoints_folder_stops_training_at_the_save(
  trained, tmp_path, monkeypatch
):
  config, workdir, _ = trained
  run = str(tmp_path / "run")
  shutil.copytree(workdir, run)
  config = tiny_train_config(config.data.data_dir)
  config.train.num_steps = 4
  folder = checkpointing.checkpoint_dir(run)
  monkeypatch.setattr(input_pipeline, "create_train_iterator", _unwritable_at(3, folder))
  start = time.monotonic()
  with pytest.raises(checkpointing.CheckpointError) as e:
    train.train_and_evaluate(config, run)
  assert time.monotonic() - start < 120  # no wait for Orbax's 300 s barrier
  assert str(e.value).startswith(f"cannot write the checkpoint of step 3 into {folder}: ")
  assert "run the same command again" in errors.report(e.value)
  os.remove(folder)
  os.rename(folder + ".kept", folder)  # what was saved before is intact
  assert api.load_checkpoint(run)[3] == 2
  jax.tree.map(np.testing.assert_array_equal, api.load(run)[2], api.load(workdir)[2])


def test_a_damaged_latest_checkpoint_costs_one_interval(trained, tmp_path, caplog):
  config, workdir, _ = trained
  damaged = str(tmp_path / "run")
  shutil.copytree(workdir, damaged)
  os.remove(f"{damaged}/config.json")  # lost too: the checkpoints carry the config
  files = glob.glob(f"{damaged}/checkpoints/2/**/d/*", recursive=True)
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)
  with caplog.at_level(logging.WARNING):
    _, _, _, step = api.load_checkpoint(damaged)
  assert step == 1
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1 and warnings[0].startswith(
    f"the checkpoint of step 2 in {damaged}/checkpoints/2 cannot be read: "
  )
  with pytest.raises(checkpointing.CheckpointError, match=r"step 2 .* cannot be read"):
    api.load(damaged, step=2)  # an explicitly requested step is not replaced by another
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="absl"):
    train.train_and_evaluate(config, damaged)
  assert "Resumed from the checkpoint of step 1" in caplog.text
  assert os.listdir(f"{damaged}/damaged_checkpoints") == ["2"]  # set aside, not deleted
  assert checkpointing.load_config(damaged).to_dict() == config.to_dict()  # config.json again
  jax.tree.map(np.testing.assert_array_equal, api.load(damaged)[2], api.load(workdir)[2])
