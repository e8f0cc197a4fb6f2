"""Test setup: two host CPU devices so the data-parallel path is exercised on a laptop, and a
persistent compilation cache so a program compiled by one test is not compiled again by the next
(e.g. the train step of each train_and_evaluate run)."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax

jax.config.update(
  "jax_compilation_cache_dir",
  os.environ.get("SEGRPN_TEST_COMPILE_CACHE", tempfile.mkdtemp(prefix="segrpn_jax_cache_")),
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
