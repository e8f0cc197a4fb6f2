"""Pure-jnp ops with static shapes: boxes, anchors, NMS, RoIAlign, matching, proposals; and the
convolution, max pooling and bilinear upsampling the models use (fast gradients on XLA:CPU)."""
