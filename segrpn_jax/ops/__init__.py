"""Pure-jnp detection ops with static shapes: boxes, anchors, NMS, RoIAlign, matching, proposals."""
