"""Mask IoU, VOC-style AP, ABO and breakdowns."""
