"""main's --compilation_cache_dir: which folder JAX's persistent compilation cache uses."""

import os

import jax
import pytest

from segrpn_jax import main


@pytest.fixture
def restored_jax_config():
  """Puts back the cache settings the test session's conftest made."""
  saved = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache)
  yield
  jax.config.update("jax_compilation_cache_dir", saved[0])
  jax.config.update("jax_enable_compilation_cache", saved[1])


def test_the_flag_then_the_environment_then_the_default(monkeypatch, restored_jax_config):
  monkeypatch.setenv("HOME", "/home/someone")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/tmp/from_env")
  assert main.use_compilation_cache("~/xla") == "/home/someone/xla"
  assert jax.config.jax_compilation_cache_dir == "/home/someone/xla"
  assert main.use_compilation_cache(None) == "/tmp/from_env"
  monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
  assert main.use_compilation_cache(None) == os.path.join(
    "/home/someone", ".cache", "segrpn_jax", "xla"
  )
  assert jax.config.jax_enable_compilation_cache


def test_an_empty_value_turns_the_cache_off(restored_jax_config):
  assert main.use_compilation_cache("") is None
  assert not jax.config.jax_enable_compilation_cache
