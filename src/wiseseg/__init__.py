"""wiseseg: instance segmentation from image-level labels (WISE, Laradji et al., BMVC 2019)."""

__version__ = "0.1.0"
