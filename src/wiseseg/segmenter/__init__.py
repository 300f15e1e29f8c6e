"""Stage 2: Mask R-CNN trained on pseudo masks (or, as the reference, on ground truth)."""
