"""Stage 1: the PeakCAM classifier trained from image-level labels, and its peaks."""
