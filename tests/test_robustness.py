"""What a run survives: a second run into its workdir, SIGTERM/SIGINT, damaged checkpoints,
an unwritable checkpoints folder, and the readable errors of the command line.

The checkpoint cases use a small array tree (no model); the only compiled model is the one of
the SIGTERM test, which needs a real training process."""

import contextlib
import gc
import glob
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from absl import app, flags

from segrpn_jax import api, checkpointing, errors, input_pipeline, main, run_config, train
from tests.test_train import _scalars
from tests.train_config import tiny_train_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env() -> dict:
  """A child's environment: this checkout first, and the tests' compilation cache and devices."""
  return {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
    "JAX_COMPILATION_CACHE_DIR": jax.config.jax_compilation_cache_dir or "",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
  }


@contextlib.contextmanager
def _argv(argv: list[str]):
  """sys.argv set to `argv` (config_flags reads its --config.<key> overrides from sys.argv)."""
  saved, sys.argv = sys.argv, argv
  flags.FLAGS.unparse_flags()
  try:
    yield
  finally:
    flags.FLAGS.unparse_flags()
    sys.argv = saved


def _main(argv: list[str], capsys) -> tuple[int, str]:
  """Runs `python -m segrpn_jax.main argv` in this process as errors.run does; (status, stderr)."""
  with _argv(["main", *argv]):
    status = errors.run(lambda: main.main(main.parse_flags(sys.argv)[:1]))
  return status, capsys.readouterr().err


# One run per workdir.


def test_a_second_run_into_a_locked_workdir_is_refused_naming_the_holder(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  holder = subprocess.Popen(
    [sys.executable, "-c",
     "import sys\nfrom segrpn_jax import run_config\n"
     f"with run_config.lock_workdir({workdir!r}):\n  print('locked', flush=True)\n"
     "  sys.stdin.read()"],
    cwd=ROOT, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
  )  # fmt: skip
  try:
    assert holder.stdout.readline().strip() == "locked"
    data_dir = str(tmp_path / "tfds")
    status, err = _main([f"--config=tests/train_config.py:{data_dir}", f"--workdir={workdir}"],
                        capsys)  # fmt: skip
    assert status == errors.EXIT_USER_ERROR
    assert f"is in use by another run (host {os.uname().nodename}, PID {holder.pid};" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 2  # the line + the hint
    assert os.listdir(workdir) == [run_config.LOCK_FILE]  # the refused run wrote nothing
  finally:
    holder.kill()  # the kernel frees the lock of a killed holder
    holder.wait()
  with (
    run_config.lock_workdir(workdir),
    pytest.raises(run_config.WorkdirError, match=f"PID {os.getpid()}"),
    run_config.lock_workdir(workdir),
  ):
    pass


# SIGTERM and SIGINT.


def test_a_signal_asks_to_stop_and_a_second_one_is_left_to_its_default_action():
  before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
  with train.StopRequest() as stop:
    assert not stop.reached(1)
    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: no KeyboardInterrupt, a request
    time.sleep(0.01)  # the handler runs at the next bytecode
    assert stop.reached(1) and stop.signum == signal.SIGINT
    # A second signal would end the process at once (the kernel's default action).
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGINT) == signal.SIG_DFL
  assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
  error = train.Interrupted(signal.SIGTERM, 70, "/w/checkpoints")
  assert error.exit_status == 143
  assert str(error) == (
    "stopped by SIGTERM after step 70, whose checkpoint is saved in /w/checkpoints; run the "
    "same command again to resume from it."
  )


def test_sigterm_saves_the_step_and_the_resumed_run_matches_an_uninterrupted_one(
  tiny_run, tmp_path
):
  data_dir = tiny_run[0]  # the shared run's dataset; its programs are in the compilation cache
  config = tiny_train_config(data_dir)
  config.train.num_steps = 6
  config.train.checkpoint_every_steps = 100  # only the signal's save and the last one

  workdir = str(tmp_path / "stopped")
  command = [sys.executable, "-m", "segrpn_jax.main", f"--config=tests/train_config.py:{data_dir}",
             f"--workdir={workdir}", "--config.train.num_steps=6",
             "--config.train.checkpoint_every_steps=100"]  # fmt: skip
  child = subprocess.Popen(command, cwd=ROOT, env=_env(), stderr=subprocess.PIPE, text=True)
  lines = []

  def stop_after_step_2():
    for line in child.stderr:  # the LoggingWriter's "[2] train/loss=..." line: step 2 is done
      lines.append(line)
      if re.search(r"\] \[2\] .*train/loss", line):
        child.send_signal(signal.SIGTERM)
        break

  watcher = threading.Thread(target=stop_after_step_2)
  watcher.start()
  straight = str(tmp_path / "straight")
  try:
    train.train_and_evaluate(config, straight)  # the uninterrupted run, while the child runs
  except BaseException:
    child.kill()
    raise
  finally:
    watcher.join(timeout=600)
  _, rest = child.communicate(timeout=600)
  output = "".join(lines) + rest
  assert child.returncode == 143, output[-3000:]
  saved = checkpointing.create_manager(workdir, config).latest_step()
  assert 2 <= saved < 6
  last = output.strip().splitlines()[-1]
  assert last.startswith(f"stopped by SIGTERM after step {saved}, whose checkpoint is saved in ")
  assert "Resume: " in last and "--config.train.num_steps=6" in last
  assert "Traceback" not in output

  train.train_and_evaluate(config, workdir)  # the resume
  losses, reference = _scalars(workdir)["train/loss"], _scalars(straight)["train/loss"]
  assert sorted(losses) == list(range(1, 7))
  for step in range(saved + 1, 7):
    assert losses[step] == reference[step], step
  jax.tree.map(np.testing.assert_array_equal, api.load(workdir)[2], api.load(straight)[2])


# Damaged checkpoints, on a small tree of arrays.

_CONFIG = ml_collections.ConfigDict({"train": {"checkpoint_every_steps": 1, "keep_checkpoints": 5}})


def _tree(scale: float = 1.0) -> dict:
  return {"a": jnp.arange(600.0) * scale, "b": {"c": jnp.ones((30, 20)) * scale}}


def _abstract(tree):
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), tree)


def _two_steps(workdir: str) -> None:
  with checkpointing.create_manager(workdir, _CONFIG) as manager:
    for step in (1, 2):
      checkpointing.save(manager, step, _tree(step), tiny_train_config("/data"))


def _delete_files(step_dir):
  for path in glob.glob(f"{step_dir}/**/*", recursive=True):
    if os.path.isfile(path):
      os.remove(path)


def _empty_metadata(step_dir):
  open(f"{step_dir}/default/_METADATA", "w").close()


def _garbage_metadata(step_dir):
  with open(f"{step_dir}/default/_METADATA", "w") as f:
    f.write("{not json")


def _truncate_data(step_dir):
  files = glob.glob(f"{step_dir}/default/ocdbt.process_0/d/*")
  largest = max(files, key=os.path.getsize)
  with open(largest, "r+b") as f:
    f.truncate(os.path.getsize(largest) // 2)


@pytest.mark.parametrize(
  "damage", [_delete_files, _empty_metadata, _garbage_metadata, _truncate_data],
  ids=["missing_files", "empty_metadata", "unreadable_metadata", "truncated_data"],
)  # fmt: skip
def test_a_damaged_step_falls_back_to_the_newest_intact_one_with_one_warning(
  damage, tmp_path, caplog, capfd
):
  workdir = str(tmp_path)
  _two_steps(workdir)
  damage(f"{workdir}/checkpoints/2")
  unraisable = []
  hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
  try:
    with (
      caplog.at_level(logging.WARNING),
      checkpointing.create_manager(workdir, _CONFIG) as manager,
    ):
      restored, step = checkpointing.restore(manager, _abstract(_tree()))
      assert checkpointing.set_aside_newer(manager, workdir, step) == [2]
      assert manager.all_steps() == [1]
    gc.collect()
  finally:
    sys.unraisablehook = hook
  assert step == 1
  jax.tree.map(np.testing.assert_array_equal, restored, _tree(1.0))
  warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
  assert len(warnings) == 1, warnings
  assert warnings[0].startswith(f"the checkpoint of step 2 in {workdir}/checkpoints/2 cannot be")
  assert "another model" not in warnings[0]
  assert os.listdir(f"{workdir}/{checkpointing.DAMAGED_DIR}") == ["2"]  # kept, not deleted
  out, err = capfd.readouterr()
  assert "Traceback" not in out + err and "never retrieved" not in out + err
  assert unraisable == []


def _read_array_index_and_device_put():  # named as Orbax's read coroutine
  raise ValueError("OUT_OF_RANGE: Error reading 'b.c' in OCDBT data")


def test_reports_of_orbax_reads_that_failed_after_a_fallback_are_dropped_others_kept(caplog):
  # Orbax's sibling reads of a damaged step fail after the restore gave up; asyncio reports each
  # when it is collected (thousands of lines after a pytest run's summary). Those reports go;
  # any other asyncio report and any other unraisable exception still pass.
  try:
    _read_array_index_and_device_put()
  except ValueError as e:
    orbax_error = e
  # The same failure reported through a plain Future that TensorStore's thread completed: no
  # Python traceback, only TensorStore's message (seen after a pytest run's summary).
  tensorstore_error = ValueError(
    'OUT_OF_RANGE: Error reading "params.a.kernel/0.0" in OCDBT database at local file '
    '"/tmp/run/checkpoints/2/default/": Requested byte range [13, 15) is not valid for value of '
    "size 14"
  )
  try:
    raise ValueError("a user's own task")
  except ValueError as e:
    other_error = e
  seen = []
  hook, sys.unraisablehook = sys.unraisablehook, seen.append
  try:
    with checkpointing.quiet():
      pass  # installs the filters for the rest of the process
    asyncio_logger = logging.getLogger("asyncio")
    with caplog.at_level(logging.ERROR, logger="asyncio"):
      for error in (orbax_error, other_error):
        asyncio_logger.error("Task exception was never retrieved", exc_info=error)
      asyncio_logger.error(
        "Future exception was never retrieved\nfuture: <Future finished exception=%r>",
        tensorstore_error,
        exc_info=tensorstore_error,
      )
    for error, obj in ((orbax_error, "<coroutine _read_array_index_and_device_put>"),
                       (other_error, "<coroutine mine>")):  # fmt: skip
      sys.unraisablehook(types.SimpleNamespace(exc_value=error, object=obj))
  finally:
    sys.unraisablehook = hook
  assert [r.exc_info[1] for r in caplog.records] == [other_error]
  assert [u.exc_value for u in seen] == [other_error]


def test_another_model_is_said_only_of_a_readable_checkpoint_with_another_tree(tmp_path):
  _two_steps(str(tmp_path))
  other = {"a": jnp.zeros(600), "b": {"c": jnp.zeros((30, 21))}}
  with checkpointing.create_manager(str(tmp_path), _CONFIG) as manager:
    with pytest.raises(checkpointing.MismatchError, match=r"b/c has shape \(30, 20\) in the "
                       r"checkpoint but \(30, 21\) in this model"):  # fmt: skip
      checkpointing.restore(manager, _abstract(other))
    with pytest.raises(errors.InputFileError, match=r"no checkpoint of step 7 .* steps \[1, 2\]"):
      checkpointing.restore(manager, _abstract(_tree()), step=7)


def test_every_step_damaged_is_one_error_listing_each(tmp_path):
  _two_steps(str(tmp_path))
  for step in (1, 2):
    _empty_metadata(f"{tmp_path}/checkpoints/{step}")
  with (
    checkpointing.create_manager(str(tmp_path), _CONFIG) as manager,
    pytest.raises(checkpointing.CheckpointError) as e,
  ):
    checkpointing.restore(manager, _abstract(_tree()))
  message = str(e.value)
  assert message.startswith(f"no checkpoint in {tmp_path}/checkpoints can be restored")
  assert "step 1 in" in message and "step 2 in" in message and "Traceback" not in message


# An unwritable checkpoints folder.


def test_an_unwritable_checkpoints_folder_fails_at_the_save_naming_it(tmp_path):
  workdir = str(tmp_path)
  folder = checkpointing.checkpoint_dir(workdir)
  with checkpointing.create_manager(workdir, _CONFIG) as manager:
    checkpointing.save(manager, 1, _tree())
    manager.wait_until_finished()
    # A file where the folder was: no write can land, for root as for anyone (chmod would not
    # stop root).
    os.rename(folder, folder + ".kept")
    open(folder, "w").close()
    start = time.monotonic()
    with pytest.raises(checkpointing.CheckpointError) as e:
      checkpointing.save(manager, 2, _tree())
    assert time.monotonic() - start < 5
  message = str(e.value)
  assert message.startswith(f"cannot write the checkpoint of step 2 into {folder}: ")
  assert "FileExistsError: File exists" in message and "Traceback" not in message
  os.remove(folder)
  os.rename(folder + ".kept", folder)
  with checkpointing.create_manager(workdir, _CONFIG) as manager:
    restored, step = checkpointing.restore(manager, _abstract(_tree()))
  assert step == 1
  jax.tree.map(np.testing.assert_array_equal, restored, _tree())


# The config travels with the checkpoints.


def test_the_workdir_guard_holds_when_config_json_is_lost(tmp_path):
  workdir = str(tmp_path / "run")
  _two_steps(workdir)  # checkpoints of the tiny config, and no config.json
  assert not os.path.exists(f"{workdir}/config.json")
  saved = checkpointing.load_config(workdir)  # read from the newest checkpoint
  assert tuple(saved.data.image_size) == (64, 128)
  config = tiny_train_config("/data")
  config.data.image_size = (32, 64)
  with pytest.raises(run_config.WorkdirError) as e:
    run_config.check_workdir(workdir, config)
  assert "config.data.image_size: (64, 128) (saved) vs (32, 64) (new)" in str(e.value)
  assert f"(the config stored with the checkpoints in {workdir}/checkpoints)" in str(e.value)
  run_config.check_workdir(workdir, tiny_train_config("/elsewhere"))


# Readable errors of the command line.


def test_bad_values_are_one_block_without_traceback(tmp_path, capsys):
  data_dir = str(tmp_path / "tfds")
  status, err = _main([f"--config=tests/train_config.py:{data_dir}", f"--workdir={tmp_path}/run",
                       "--config.train.base_lr=-0.01", "--config.train.momentum=1.0"],
                      capsys)  # fmt: skip
  assert status == errors.EXIT_USER_ERROR
  assert err.startswith("error: the config has 2 problem(s):")
  assert "config.train.base_lr = -0.01 must be > 0." in err
  assert "config.train.momentum = 1.0 must be in [0, 1)" in err
  assert "Traceback" not in err and not os.path.exists(f"{tmp_path}/run")


@pytest.mark.parametrize(
  "argv, expected",
  [
    (["--config=tests/train_config.py:/d", "--config.model.foo=1"],
     "error: config.model.foo is not a key of the config (tests/train_config.py:/d); the closest "
     "existing: config.model.roi, config.model.fusion, config.model.norm. Fix the key's name."),
    (["--config=tests/train_config.py:/d", "--config.model.rpn.nms_threshol=0.5"],
     "closest existing: config.model.rpn.nms_threshold,"),
    (["--config=configs/nope.py"],
     "error: --config=configs/nope.py: the config file configs/nope.py does not exist;"),
    (["--config=configs/case1.py:synthetc"],
     "error: --config=configs/case1.py:synthetc: unknown config token 'synthetc'; use a fusion"),
    (["--config=tests/train_config.py:/d", "--config.train.num_steps=abc"],
     "error: --config.train.num_steps=abc: invalid literal for int()"),
  ],
)  # fmt: skip
def test_flag_problems_are_one_block_without_traceback(argv, expected, tmp_path):
  with _argv(["main", f"--workdir={tmp_path}/run", *argv]), pytest.raises(errors.UserError) as e:
    main.parse_flags(sys.argv)  # the parser of `python -m segrpn_jax.main`, in this process
  block = errors.report(e.value)
  assert expected in block and "Traceback" not in block
  assert len(block.splitlines()) == 2


def test_a_quoted_tilde_workdir_is_the_home_folder(tmp_path, capsys, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.chdir(tmp_path)
  status, err = _main(["--mode=eval", "--workdir=~/run"], capsys)
  assert status == errors.EXIT_USER_ERROR
  assert err.startswith(f"error: {tmp_path}/run/config.json not found and no checkpoint carries")
  assert "Traceback" not in err and not os.path.exists(tmp_path / "~")


def test_a_missing_dataset_is_reported_before_anything_is_built(tmp_path, monkeypatch, capsys):
  calls = []
  monkeypatch.setattr(input_pipeline, "create_train_iterator", lambda *a, **k: calls.append(a))
  status, err = _main(["--config=configs/case1.py", f"--workdir={tmp_path}/run",
                       "--config.data.manual_dir=/nonexistent/cityscapes",
                       f"--config.data.data_dir={tmp_path}/tfds", "--config.model.pretrained="],
                      capsys)  # fmt: skip
  assert status == errors.EXIT_USER_ERROR and "/nonexistent/cityscapes" in err
  assert "Traceback" not in err and calls == [] and not os.path.exists(f"{tmp_path}/run")


def test_a_tools_command_line_names_a_stray_argument_and_the_first_missing_flag():
  fv = flags.FlagValues()
  flags.DEFINE_string("input", None, "", flag_values=fv)
  flags.DEFINE_string("output", None, "", flag_values=fv)
  flags.DEFINE_integer("depth", None, "", flag_values=fv)
  fv(["tool", "--input=a.pth", "--output=", "--depth=0"])
  with pytest.raises(app.UsageError, match=r"^unexpected arguments: \['b'\]$"):
    errors.check_command_line(["tool", "b"], fv, ("input",))
  with pytest.raises(app.UsageError, match=r"^--output is required\.$"):  # empty is missing
    errors.check_command_line(["tool"], fv, ("input", "output", "depth"))
  errors.check_command_line(["tool"], fv, ("input", "depth"))  # 0 is a value
