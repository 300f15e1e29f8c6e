"""Backbones (registry), PeakCAM classifier, Mask R-CNN builders. No I/O here."""
