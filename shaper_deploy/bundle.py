"""The bundle manifest (``shaper.json``): one typed record, one writer, one reader.

Export writes it; the planner adds its ``plan`` and ``export --profile`` its
``predicted_latency``, both through :meth:`BundleManifest.write`; serving, Triton and the CLI
read it through :meth:`BundleManifest.read`, which checks format and version every time.
Torch-free, like everything on the serving side.

Version 2 stores the design space once (inside ``config``) and no ``max_length`` (it is the
design space's ``max_positions``); version 1 manifests are still read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .errors import ServingError, ShaperError
from .io import atomic_write_bytes, read_manifest
from .shape import reject_unknown_fields

BUNDLE_FORMAT = "shaper-deploy/bundle"
BUNDLE_VERSION = 2
MANIFEST = "shaper.json"
_V1_DUPLICATES = ("design_space", "max_length")  # derived from config since version 2


@dataclass
class BundleManifest:
    shape: list[int]  # one width per layer
    config: dict[str, Any]  # the super network's SuperConfig; the design space is config["space"]
    task: str  # feature-extraction or fill-mask
    inputs: list[str]
    outputs: list[str]
    default_model: str  # the ONNX file served unless another is asked for
    files: dict[str, dict[str, Any]]  # name -> sha256, bytes (and precision for models)
    params: dict[str, Any]  # fused / unfused counts, breakdown, convention
    validation: dict[str, Any]  # ONNX Runtime vs PyTorch float64, per case
    created: str = ""
    flops_seq128: int = 0
    opset: int = 0
    optimized: bool = True
    attention_mask: str = "2-D (batch, sequence); any padding pattern"
    fused_last_bottleneck_into_head: bool = False
    dropped_identities: list[Any] = field(default_factory=list)
    operators: dict[str, int] = field(default_factory=dict)
    fusion: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None
    source: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    plan: dict[str, Any] | None = None  # written by the planner (export --latency)
    predicted_latency: list[dict[str, Any]] | None = None  # export --profile without a budget

    @property
    def design_space(self) -> dict[str, Any]:
        return self.config["space"]

    @property
    def max_length(self) -> int:
        """The longest input in tokens: the design space's position embeddings."""
        return int(self.design_space["max_positions"])

    def to_dict(self) -> dict[str, Any]:
        return {"format": BUNDLE_FORMAT, "format_version": BUNDLE_VERSION, **asdict(self)}

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/shaper.json`` atomically."""
        path = Path(folder) / MANIFEST
        atomic_write_bytes(path, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "shaper.json",
                  error: type[ShaperError] = ServingError) -> "BundleManifest":
        data = dict(data)
        version = data.pop("format_version", None)
        data.pop("format", None)
        if version == 1:  # duplicates dropped; plan and predictions were written only if made
            for key in _V1_DUPLICATES:
                data.pop(key, None)
            data = {"plan": None, "predicted_latency": None, **data}
        # what we write we write whole: a missing field is damage, never a default
        reject_unknown_fields(cls, data, f"bundle manifest {where}", error, require_all=True)
        try:
            manifest = cls(**data)
            if not isinstance(manifest.files, dict) or "space" not in manifest.config:
                raise TypeError("files must be an object and config must hold the space")
            [int(w) for w in manifest.shape]
        except (TypeError, ValueError) as exc:
            raise error(f"{where} is malformed ({exc}); export the bundle again") from None
        return manifest

    @classmethod
    def read(cls, folder: str | Path, error: type[ShaperError] = ServingError
             ) -> "BundleManifest":
        """``folder/shaper.json``: format and version checked, every field present, unknown
        fields refused."""
        folder = Path(folder)
        if not folder.is_dir():
            raise error(f"{folder} does not exist or is not a folder; a bundle is the folder "
                        "shaperctl export --out writes")
        data = read_manifest(folder / MANIFEST, BUNDLE_FORMAT, BUNDLE_VERSION, "bundle", error,
                             f"{folder} is not a bundle (no {MANIFEST}); make one with "
                             "shaperctl export")
        return cls.from_dict(data, str(folder / MANIFEST), error)
