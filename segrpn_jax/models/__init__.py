"""Flax linen modules of SegRPN: ResNet, FPN, the RPNs, the ROI head and the segmentation heads."""
