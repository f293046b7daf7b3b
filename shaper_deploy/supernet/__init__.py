"""The super network: configuration, modules, the backbone and its checkpoints.

``SuperBert`` and friends, and the checkpoint reader and writers (``load_supernet``,
``supernet_from_hf``, ``save_supernet``), are imported lazily so that reading a checkpoint's
header (the CLI's ``supernet info``) does not pay for importing torch.
"""

from .config import SuperConfig, read_checkpoint_header

__all__ = ["BottleneckBert", "EncoderOutput", "SuperBert", "SuperConfig", "load_supernet",
           "read_checkpoint_header", "save_supernet", "supernet_from_hf"]


def __getattr__(name: str):
    if name in ("BottleneckBert", "EncoderOutput", "SuperBert"):
        from . import model

        return getattr(model, name)
    if name in ("load_supernet", "save_supernet", "supernet_from_hf"):
        from . import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
