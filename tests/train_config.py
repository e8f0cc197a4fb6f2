"""The tiny synthetic config the training tests share (one compile of each jitted function)."""

from segrpn_jax.configs import default


def tiny_train_config(data_dir: str):
  c = default.synthetic(default.get_config())
  c.data.dataset = "synthetic_streets/tiny"  # 64x128, 8 train, 4 validation
  c.data.data_dir = data_dir
  c.data.image_size = (64, 128)
  c.data.max_instances = 16
  c.data.shuffle_buffer = 8
  m = c.model
  m.width_multiplier = 0.25
  m.fpn_channels = m.semantic_channels = 16
  m.size_scale = 64 / 512
  m.anchor.sizes = (8, 16, 32, 64, 128)
  m.rpn.pre_nms_topk_train = m.rpn.pre_nms_topk_test = 64
  m.rpn.post_nms_topk_train = m.rpn.post_nms_topk_test = 64
  m.roi.fc_dim, m.roi.batch_size_per_image = 32, 16
  m.roi.canonical_size = 224 // 8
  t = c.train
  t.batch_size = 2
  t.num_steps = 2
  t.warmup_steps = 1
  t.decay_steps = ()  # no decay inside a run of a few steps
  t.checkpoint_every_steps = 1
  t.eval_every_steps = 100
  t.log_every_steps = 1
  c.eval.batch_size = 2
  c.eval.max_proposals = 64
  c.eval.num_image_summaries = 1
  return c


def get_config(data_dir: str):
  """For `--config=tests/train_config.py:DATA_DIR` in the --mode=eval test."""
  return tiny_train_config(data_dir)
