"""ERNIE (Baidu's, as transformers has it): BERT under an ``ernie.`` prefix; the optional
task-type embeddings (``use_task_id``) are refused (no other family has them)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from . import Architecture, Family


@dataclass(frozen=True)
class ErnieFamily(Family):
    def read_config(self, cfg: dict[str, Any], path: Path) -> Architecture:
        if cfg.get("use_task_id"):
            raise CheckpointError(f"{path} uses task type embeddings (use_task_id); only ERNIE "
                                  "models without them are supported")
        return super().read_config(cfg, path)

    def config_fields(self, arch: Architecture) -> dict[str, Any]:
        return {**super().config_fields(arch), "use_task_id": False}


ERNIE = ErnieFamily(name="ernie", model_types=("ernie",), class_prefix={"ernie": "Ernie"},
                    prefix="ernie.")
