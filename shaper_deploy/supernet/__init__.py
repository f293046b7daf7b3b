"""The super network: configuration, modules, the backbone and its checkpoints.

``SuperBert`` and friends are imported lazily so that reading a checkpoint's header (the CLI's
``supernet info``) does not pay for importing torch.
"""

from .config import SuperConfig, read_checkpoint_header

__all__ = ["BottleneckBert", "EncoderOutput", "SuperBert", "SuperConfig",
           "read_checkpoint_header"]


def __getattr__(name: str):
    if name in ("BottleneckBert", "EncoderOutput", "SuperBert"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
