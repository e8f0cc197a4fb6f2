"""The model's convolution layer: flax's `nn.Conv` over `ops.conv.conv_general_dilated`.

Every convolution of the model is this `Conv`, so every one gets the weight gradient that runs
at a matrix product's rate on XLA:CPU (on GPU and TPU it is XLA's own; see `ops/conv.py`).
Arguments and parameters are `nn.Conv`'s, so checkpoints are unchanged.
"""

import functools

import flax.linen as nn

from segrpn_jax.ops import conv

Conv = functools.partial(nn.Conv, conv_general_dilated=conv.conv_general_dilated)
