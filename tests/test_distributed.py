"""Two real JAX processes (jax.distributed over 127.0.0.1, one CPU device each) train and
evaluate the tiny config, and agree with one process of two devices on the same global batch."""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from segrpn_jax import api, input_pipeline, train
from tests.test_train import _scalars
from tests.train_config import tiny_train_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gloo_available() -> bool:
  try:
    from jax._src.lib import _jax
  except ImportError:
    return False
  return hasattr(_jax, "make_gloo_tcp_collectives")


pytestmark = pytest.mark.skipif(
  not _gloo_available(), reason="this jaxlib has no gloo CPU collectives for several processes"
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _metrics(workdir: str) -> dict:
  with open(os.path.join(workdir, "metrics_2.json")) as f:
    return json.load(f)


def test_two_processes_match_one(tiny_run, tmp_path, monkeypatch):
  # The shared run's dataset (both children only read it); the reference below reuses the
  # programs that run traced and compiled in this process.
  data_dir = tiny_run[0]
  config = tiny_train_config(data_dir)
  workdir = str(tmp_path / "two_processes")
  port = _free_port()
  # One CPU device per process; the other XLA flags and the compilation cache are conftest's.
  xla_flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f]
  env = {
    **os.environ,
    "XLA_FLAGS": " ".join([*xla_flags, "--xla_force_host_platform_device_count=1"]),
    "JAX_PLATFORMS": "cpu",
    "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]),
  }
  command = [
    sys.executable,
    "-m",
    "segrpn_jax.main",
    f"--config=tests/train_config.py:{data_dir}",
    f"--workdir={workdir}",
    "--config.distributed=True",
    f"--config.coordinator_address=127.0.0.1:{port}",
    "--config.num_processes=2",
  ]
  children = [
    subprocess.Popen(
      [*command, f"--config.process_id={i}"],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for i in range(2)
  ]
  outputs = [child.communicate(timeout=900)[0] for child in children]
  for i, (child, output) in enumerate(zip(children, outputs, strict=True)):
    assert child.returncode == 0, f"process {i} failed:\n{output[-4000:]}"

  # The reference: one process of two devices fed the same global batches. Process i of two
  # reads shard i of the split, and the global batch puts process 0's rows first, so the
  # reference concatenates the two shards' batches in that order (the per-image sampling keys
  # follow the row, so the order matters too).
  real = input_pipeline.create_train_iterator

  def both_shards(config, start_step=0, **kwargs):
    shards = [real(config, start_step, process_index=i, process_count=2) for i in range(2)]
    for parts in zip(*shards, strict=True):
      yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  monkeypatch.setattr(input_pipeline, "create_train_iterator", both_shards)
  reference = str(tmp_path / "one_process")
  train.train_and_evaluate(config, reference)

  two, one = _scalars(workdir), _scalars(reference)
  for step in (1, 2):
    np.testing.assert_allclose(two["train/loss"][step], one["train/loss"][step], rtol=1e-5)
  # Every validation image scored once: the same numbers as one process that sees them all.
  a, b = _metrics(workdir), _metrics(reference)
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)
  # One checkpoint per saved step, written jointly by both processes.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["1", "2"]
  _, _, restored = api.load(workdir)  # a single process can restore it
  _, _, expected = api.load(reference)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), restored,
               expected)  # fmt: skip
