"""The tiny synthetic config the training tests share (one compile of each jitted function): the
configs' `tiny` token (segrpn_jax/configs/default.py) with the tests' TFDS folder."""

from segrpn_jax.configs import default


def tiny_train_config(data_dir: str):
  c = default.apply_tokens(default.get_config(), "tiny")
  c.data.data_dir = data_dir
  return c


def get_config(data_dir: str):
  """For `--config=tests/train_config.py:DATA_DIR` in the --mode=eval test."""
  return tiny_train_config(data_dir)
