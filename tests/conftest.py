"""Test setup, applied before JAX is imported and inherited by every subprocess a test starts:

- two host CPU devices, so the data-parallel path is exercised on a laptop;
- XLA's CPU backend optimisations off (LLVM -O0, no expensive passes): the tests compile far
  more than they run. The tiny config's (tests/train_config.py) train step compiles in 18 s of
  CPU time instead of 35 s and runs in 0.37 s instead of 0.16 s (our measurement, jax 0.10.2);
- one persistent compilation cache per test run (a temporary folder, removed at exit), so a
  program compiled by one test or process is loaded, not compiled again, by the next (e.g. the
  train step of each train_and_evaluate run of the tiny config);
- one 2-step run of the tiny config per worker process (the `tiny_run` fixture), shared by the
  test files that need a trained workdir;
- `-n auto` (pyproject.toml's addopts, pytest-xdist): one worker per core available to the
  process, at most MAX_WORKERS (each holds its own JAX, TensorFlow and compiled programs).
  The workers share the compilation cache: this file runs in the controller first, and they
  inherit its environment.

Flags already in XLA_FLAGS are kept; a cache folder in JAX_COMPILATION_CACHE_DIR is used as is.
"""

import atexit
import gc
import os
import shutil
import tempfile

import pytest

TEST_XLA_FLAGS = {
  "--xla_force_host_platform_device_count": "2",
  "--xla_backend_optimization_level": "0",
  "--xla_llvm_disable_expensive_passes": "true",
}


def _xla_flags(existing: str) -> str:
  """`existing` plus every TEST_XLA_FLAGS entry it does not set itself."""
  names = {flag.split("=")[0] for flag in existing.split()}
  added = [f"{name}={value}" for name, value in TEST_XLA_FLAGS.items() if name not in names]
  return " ".join([existing, *added]).strip()


os.environ["XLA_FLAGS"] = _xla_flags(os.environ.get("XLA_FLAGS", ""))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="segrpn_jax_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402  (after the environment it reads)

# The environment sets these when jax is first imported here; a plugin may have imported it first.
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
  "jax_persistent_cache_min_compile_time_secs",
  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]),
)
jax.config.update(
  "jax_persistent_cache_min_entry_size_bytes",
  int(os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"]),
)


MAX_WORKERS = 4


def pytest_xdist_auto_num_workers(config) -> int:
  """Workers for `-n auto`: PYTEST_XDIST_AUTO_NUM_WORKERS when set (xdist's own setting), else the
  cores this process may run on, at most MAX_WORKERS."""
  if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
    return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return max(1, min(cores or 1, MAX_WORKERS))


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session) -> None:
  """On a worker, before it reports that it has finished: free the compiled programs and collect
  the garbage. After that report the controller gives a worker 5 s to end before it sends it
  SIGINT (execnet), whose KeyboardInterrupt, landing in JAX's garbage-collection callback, was
  printed under the test results of a loaded machine."""
  if hasattr(session.config, "workerinput"):
    jax.clear_caches()
    gc.collect()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
  """(data_dir, workdir, results) of one 2-step train_and_evaluate of tests/train_config.py's
  tiny config: checkpoints and logs every step, evaluates at the end. A test that writes into
  the workdir works on a copy (`shutil.copytree`); build the config with
  `tiny_train_config(data_dir)`."""
  from segrpn_jax import train
  from tests.train_config import tiny_train_config

  data_dir = str(tmp_path_factory.mktemp("tfds"))
  workdir = str(tmp_path_factory.mktemp("tiny_run"))
  results = train.train_and_evaluate(tiny_train_config(data_dir), workdir)
  return data_dir, workdir, results
