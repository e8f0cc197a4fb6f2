"""Every hyperparameter of SegRPN, with the paper's Cityscapes recipe as the default.

The paper settings (baseline.py, segrpn.py, case1.py, case2.py, case3.py) start from
`get_config()` and change only what their row of the paper changes.
"""

import ml_collections

from segrpn_jax.models.rpn import FUSIONS


def get_config() -> ml_collections.ConfigDict:
  """Returns the default config: ResNet-50-FPN, case1, roi+rpn fusion, 512x1024, 96k steps."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # PRNG seed for parameters, sampling and data order
  c.distributed = False  # several processes: call jax.distributed.initialize() at start
  # The cluster of a distributed run; None = JAX's own detection from the environment (SLURM,
  # Cloud TPU, Kubernetes...). By hand: every process gets the same address and count.
  c.coordinator_address = ml_collections.config_dict.placeholder(str)  # "host:port" of process 0
  c.num_processes = ml_collections.config_dict.placeholder(int)
  c.process_id = ml_collections.config_dict.placeholder(int)  # 0 .. num_processes - 1

  c.data = d = ml_collections.ConfigDict()
  # TFDS name: cityscapes_instances or synthetic_streets[/config]
  d.dataset = "cityscapes_instances"
  # TFDS data_dir, None = ~/tensorflow_datasets (a placeholder so --config.data.data_dir works)
  d.data_dir = ml_collections.config_dict.placeholder(str)
  d.manual_dir = "data/cityscapes"  # folder with the Cityscapes zips or leftImg8bit/ + gtFine/
  d.image_size = (512, 1024)  # (height, width) every image is resized to
  d.max_instances = 100  # ground-truth boxes per image are padded to this; more is an error
  d.random_flip = True  # horizontal flip in training
  # (height, width) of a random window of the resized image to train on; () = the whole image.
  # Evaluation always sees the whole image_size.
  d.train_crop_size = ()
  d.shuffle_buffer = 1024  # tf.data shuffle buffer (examples)
  d.prefetch = 2  # batches prefetched on the host
  d.train_split = "train"  # TFDS split for training
  d.eval_split = "validation"  # TFDS split for evaluation

  c.model = m = ml_collections.ConfigDict()
  m.backbone = "resnet50"  # resnet18 | resnet34 | resnet50 | resnet101
  m.width_multiplier = 1.0  # scales every ResNet width (small CPU models use < 1)
  m.norm = "frozen_bn"  # frozen_bn (paper) | bn | gn
  # Backbone stages without update: 0 none (the paper: "All feature layers are jointly updated
  # during training"), 1 the stem, 2 the stem and res2 (detectron2's choice:
  # --config.model.freeze_at=2). BN stays a fixed affine either way (norm = frozen_bn).
  m.freeze_at = 0
  m.pretrained = (
    "weights/resnet50.npz"  # torchvision ResNet state dict (.pth/.npz/.safetensors); "" = none
  )
  m.fpn_channels = 256  # FPN and RPN feature width
  m.num_classes = 8  # detection thing classes (background excluded)
  m.num_semantic_classes = 19  # Cityscapes trainIds
  m.semantic_head = True  # Panoptic-FPN semantic head
  m.class_agnostic = True  # class-agnostic module and RPN_mask (False: the paper's baseline)
  m.rpn_mask = True  # RPN_mask on the class-agnostic module (False: the paper's Fig. 5 network)
  m.semantic_channels = 128  # semantic head conv width
  m.class_agnostic_convs = 2  # 3x3 convs per level in the class-agnostic module
  # Width of the class-agnostic module's per-level features M_l (RPN_mask's input); None = the
  # FPN's width. The paper gives no width: ours is a choice (docs/architecture.md); half the
  # width over 3 seeds of the quick start: docs/results.md.
  m.class_agnostic_channels = ml_collections.config_dict.placeholder(int)
  m.scale_case = "case1"  # none | case1 | case2 | case3 (docs/architecture.md, eqs. 3-5)
  m.size_scale = 1.0  # scale-case thresholds are for 512x1024 input; multiply for other sizes
  m.dtype = "float32"  # compute dtype: float32 | bfloat16

  m.fusion = ml_collections.ConfigDict()
  m.fusion.train = "roi+rpn"  # none | rpn | roi | roi+rpn, used in training
  m.fusion.inference = "roi+rpn"  # none | rpn | roi | roi+rpn, used at inference

  m.anchor = a = ml_collections.ConfigDict()
  a.sizes = (32, 64, 128, 256, 512)  # one anchor size per level P2..P6
  a.aspect_ratios = (0.5, 1.0, 2.0)  # h/w
  a.strides = (4, 8, 16, 32, 64)  # P2..P6
  a.offset = 0.0  # anchor centre offset in units of the stride (detectron2: 0)

  m.rpn = r = ml_collections.ConfigDict()
  r.iou_thresholds = (0.3, 0.7)  # below: negative, above: positive, between: ignored
  r.batch_size_per_image = 256  # anchors sampled per image for the loss
  r.positive_fraction = 0.5  # at most this fraction of sampled anchors are positive
  r.pre_nms_topk_train = 2000  # per level, before NMS
  r.pre_nms_topk_test = 1000
  r.post_nms_topk_train = 2000  # per image, after NMS
  r.post_nms_topk_test = 1000
  r.nms_threshold = 0.7
  r.min_size = 0.0  # proposals need both sides > this (pixels), as detectron2 nonempty()
  r.box_weights = (1.0, 1.0, 1.0, 1.0)  # Box2BoxTransform weights of the RPN

  m.roi = o = ml_collections.ConfigDict()
  o.canonical_size = 224  # ROI level rule: k = floor(4 + log2(sqrt(wh) / canonical_size))
  o.canonical_level = 4
  o.pooler_resolution = 7  # RoIAlign output side
  o.sampling_ratio = 2  # RoIAlign bilinear samples per bin side
  o.fc_dim = 1024  # the two FC layers of the box head
  o.batch_size_per_image = 512  # ROIs sampled per image in training
  o.positive_fraction = 0.25
  o.fg_iou_threshold = 0.5  # ROI with IoU >= this is foreground
  o.box_weights = (10.0, 10.0, 5.0, 5.0)
  o.score_threshold = 0.05  # inference
  o.nms_threshold = 0.5  # inference, per class
  o.detections_per_image = 100

  c.loss = w = ml_collections.ConfigDict()
  w.rpn_det = 1.0  # RPN_det objectness + box loss
  w.rpn_mask = 1.0  # RPN_mask objectness + box loss
  w.roi_cls = 1.0
  w.roi_box = 1.0
  w.semantic = 1.0  # semantic cross entropy
  w.class_agnostic = 1.0  # per-level class-agnostic BCE
  w.class_agnostic_map = 1.0  # BCE of the stride-4 class-agnostic map (all levels, full res.)

  c.train = t = ml_collections.ConfigDict()
  t.batch_size = 1  # global batch over all devices and hosts
  t.num_steps = 96_000
  t.base_lr = 0.001
  t.warmup_start_lr = 0.0003  # linear warm-up from this ...
  t.warmup_steps = 500  # ... to base_lr over this many steps
  t.decay_steps = (60_000, 80_000)  # learning rate x decay_factor at each
  t.decay_factor = 0.1
  t.momentum = 0.9
  t.weight_decay = 1e-4
  t.checkpoint_every_steps = 2000
  t.keep_checkpoints = 3  # Orbax keeps the last K
  t.eval_every_steps = 8000
  t.log_every_steps = 50

  c.eval = e = ml_collections.ConfigDict()
  e.batch_size = 1  # global eval batch; the last batch is padded and masked
  e.max_proposals = 1000  # AR@1000
  e.num_image_summaries = 4
  return c


def synthetic(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The CPU quick start: synthetic_streets at 256x512, a small ResNet-18 and a short schedule.

  Sizes are halved with the image: anchors 16..256 and the scale-case thresholds (size_scale).
  Without ImageNet weights frozen BN would be an identity, so the small model uses GroupNorm.
  """
  c.data.dataset = "synthetic_streets"
  c.data.manual_dir = None
  c.data.image_size = (256, 512)
  c.data.max_instances = 64
  c.data.shuffle_buffer = 256
  m = c.model
  m.backbone = "resnet18"
  m.width_multiplier = 0.5
  m.norm = "gn"
  m.freeze_at = 0
  m.pretrained = ""
  m.fpn_channels = 32  # the per-level 3x3 convs at stride 4 dominate a CPU step: keep them narrow
  m.semantic_channels = 32
  m.class_agnostic_convs = 1
  m.size_scale = 0.5
  m.anchor.sizes = (16, 32, 64, 128, 256)
  m.rpn.pre_nms_topk_train = 1000
  m.rpn.post_nms_topk_train = 500
  m.rpn.pre_nms_topk_test = 500
  m.rpn.post_nms_topk_test = 1000
  m.roi.fc_dim = 256
  m.roi.batch_size_per_image = 128
  m.roi.canonical_size = m.roi.canonical_size // 2
  t = c.train
  t.batch_size = 4
  t.num_steps = 800  # with build, compile and evaluation: 11-20 min on 2 CPU cores, by CPU
  t.base_lr = 0.02
  t.warmup_start_lr = 0.002
  t.warmup_steps = 100
  t.decay_steps = (600, 720)
  t.checkpoint_every_steps = 200
  t.eval_every_steps = 800
  t.log_every_steps = 50
  c.eval.batch_size = 8
  return c


def tiny(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The smallest setting that runs every part: tests and smoke runs share it (the `tiny` token).

  `synthetic` first, then synthetic_streets/tiny (64x128 images, 8 train and 4 validation), a
  quarter-width ResNet-18 with 16-channel FPN and heads, 64 proposals, 2 images per batch and a
  2-step schedule that checkpoints every step. It learns nothing; it compiles and runs in
  seconds on a CPU.
  """
  synthetic(c)
  c.data.dataset = "synthetic_streets/tiny"
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


def cityscapes_like(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The quick start on synthetic_streets/cityscapes_like: Cityscapes' instance counts, sizes
  and clutter at 256x512 (docs/synthetic.md). Applies `synthetic` first unless it already was.
  """
  if not c.data.dataset.startswith("synthetic_streets"):
    synthetic(c)
  c.data.dataset = "synthetic_streets/cityscapes_like"
  c.data.max_instances = 100  # the scenes hold at most 90 (cityscapes_like_scene.MAX_INSTANCES)
  return c


def apply_tokens(c: ml_collections.ConfigDict, arg: str | None, fusion_allowed: bool = True):
  """Applies the comma-separated config tokens of `--config=FILE:TOKENS`.

  Args:
    c: a config from `get_config()` after the paper setting has been applied.
    arg: e.g. "roi", "rpn,synthetic", "roi+rpn,tiny" or None. A fusion token sets the fusion
      used in training and at inference (evaluation reports the numbers without it as well);
      `tiny` includes `synthetic`, in either order.
    fusion_allowed: False for the baseline, which has no RPN_mask to fuse.

  Returns:
    The config, changed in place.
  """
  tokens = [token.strip() for token in (arg or "").split(",") if token.strip()]
  for token in tokens:
    if token in FUSIONS:
      if not fusion_allowed and token != "none":
        raise ValueError(f"config token {token!r}: the baseline has no RPN_mask to fuse with.")
      c.model.fusion.train = c.model.fusion.inference = token
    elif token == "synthetic":
      if not c.data.dataset.startswith("synthetic_streets"):  # tiny or cityscapes_like applied it
        synthetic(c)
    elif token == "tiny":
      tiny(c)
    elif token == "cityscapes_like":
      cityscapes_like(c)
    else:
      raise ValueError(
        f"unknown config token {token!r}; use a fusion ({', '.join(FUSIONS)}) and/or "
        "'synthetic', 'tiny', 'cityscapes_like'."
      )
  return c
