"""The names of the registered backbones, importable without torch.

The command line lists them in ``--help``; importing :mod:`wiseseg.models.backbones` would load
torch and the network code for every command, data and evaluation ones included.
:mod:`wiseseg.models.backbones` registers exactly these (a test checks the two agree).
"""

BACKBONE_NAMES: tuple[str, ...] = (
    "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2",
    "resnet18", "resnet34", "resnet50", "resnet101",
)
