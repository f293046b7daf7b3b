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
from typing import Any, Literal, Optional, get_args

from typing_extensions import NotRequired, TypedDict

from .errors import ServingError, ShaperError
from .families import Family, family
from .io import atomic_write_bytes, read_manifest
from .schema import Count, Positive, Sha256, validated
from .shape import reject_unknown_fields

BUNDLE_FORMAT = "shaper-deploy/bundle"
BUNDLE_VERSION = 2
MANIFEST = "shaper.json"
_V1_DUPLICATES = ("design_space", "max_length")  # derived from config since version 2

# The deployed graph's contract, as the manifest records it (export takes these names).
Task = Literal["feature-extraction", "fill-mask", "text-classification"]
OutputName = Literal["last_hidden_state", "pooler_output", "logits"]
Precision = Literal["fp32", "int8"]
TASKS: tuple[str, ...] = get_args(Task)


HEAD_TASKS = {"fill-mask": "an MLM head", "text-classification": "a task head"}


def task_outputs(task: str, pooler: bool) -> list[str]:
    """The graph outputs of a task, in order (the one place that decides them)."""
    if task in HEAD_TASKS:
        return ["logits"]
    return ["last_hidden_state"] + (["pooler_output"] if pooler else [])


def output_shape(output: str, task: str, config: dict[str, Any]) -> list[int]:
    """An output's shape, -1 for batch and sequence (Triton drops the batch dimension):
    ``config`` is the network's SuperConfig as a dict (the manifest's)."""
    space = config["space"]
    if output == "logits":
        if task == "text-classification":
            head = config["task_head"]
            return [-1, 1 if head["problem"] == "regression" else len(head["labels"])]
        return [-1, -1, space["vocab_size"]]
    return {"last_hidden_state": [-1, -1, space["hidden_size"]],
            "pooler_output": [-1, space["hidden_size"]]}[output]


class FileRecord(TypedDict):
    """One file of the bundle: every file in the folder but shaper.json has one."""
    sha256: Sha256
    bytes: Count
    precision: NotRequired[Precision]  # ONNX models only


class ParamsRecord(TypedDict):
    fused: Count
    unfused: Count
    breakdown_fused: dict[str, Count]
    deployed_module: Count
    convention: str


class PlanRecord(TypedDict):
    """What ``export --latency`` chose and why (written by the planner)."""
    budget_ms: float
    batch: Positive
    seq_len: Positive
    workload_source: str  # given, the profile's reference size, or the longest of the texts
    device: str
    precision: Precision
    shape: list[Positive]
    params: Count
    predicted_ms: float
    predicted_upper_ms: float
    measured_ms: Optional[float]
    fidelity: float
    fidelity_metric: str
    calibration: str
    profile: str
    candidates: list[dict[str, Any]]
    method: str
    profile_trust: NotRequired[dict[str, Any]]
    budget: NotRequired[dict[str, Any]]
    percentile: NotRequired[float]
    network: NotRequired[str]  # supernet (a slice) or teacher (train task's full model)
    families: NotRequired[dict[str, Any]]  # the shape families screened, per precision
    target: NotRequired[dict[str, Any]]
    verification: NotRequired[Optional[dict[str, Any]]]
    # where the machine ran slower than the profile's tail prices while the candidates were
    # measured (planner._beyond_priced); None where it did not
    machine_beyond_priced: NotRequired[Optional[dict[str, Any]]]
    # where the machine ran faster than the profile describes in every measurement
    # (planner._faster_than_profiled); None where it did not
    machine_faster: NotRequired[Optional[dict[str, Any]]]
    # the user's texts (--eval, else --calibration) in tokens as served: count, longest,
    # median, and how many are longer than seq_len (planner._workload); None without texts
    inputs: NotRequired[Optional[dict[str, Any]]]


@dataclass
class BundleManifest:
    shape: list[Positive]  # one width per layer
    config: dict[str, Any]  # the super network's SuperConfig; the design space is config["space"]
    task: Task
    inputs: list[str]  # the graph's, exactly its family's (families.Family.inputs)
    outputs: list[OutputName]
    default_model: str  # the ONNX file served unless another is asked for
    files: dict[str, FileRecord]  # every file of the folder but shaper.json
    params: ParamsRecord  # fused / unfused counts, breakdown, convention
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
    plan: PlanRecord | None = None  # written by the planner (export --latency)
    predicted_latency: list[dict[str, Any]] | None = None  # export --profile without a budget

    @property
    def design_space(self) -> dict[str, Any]:
        return self.config["space"]

    @property
    def super_config(self):
        """The network's SuperConfig (torch-free; checked when the manifest was read)."""
        from .supernet.config import SuperConfig

        return SuperConfig.from_dict(self.config, "bundle config")

    @property
    def family(self) -> Family:
        """The model family's spec (bundles made before families are BERT)."""
        return family(self.config.get("model_type", "bert"))

    @property
    def max_length(self) -> int:
        """The longest input in tokens: the position embeddings less the family's offset."""
        return self.family.max_tokens(int(self.design_space["max_positions"]),
                                      int(self.config["pad_token_id"]))

    @property
    def promise(self) -> dict[str, Any] | None:
        """What serving a planned bundle should say of its plan: the latency promised (a
        percentile at a workload, on which machine), the fidelity that bought, and where it
        was last checked (``verify``'s verdict, else the export's measurement; none for a plan
        made for another device and not yet verified there). None without a plan."""
        plan = self.plan
        if not plan:
            return None
        target = plan.get("target") or {}
        verification = plan.get("verification")
        if verification:  # judged_ms since 2026-12-02; measured_ms in verdicts before it
            checked = {"by": "verify", "when": verification.get("when"),
                       "ms": verification.get("judged_ms", verification.get("measured_ms")),
                       "within_budget": bool(verification.get("within_budget"))}
        elif target.get("for_device") or plan["measured_ms"] is None:
            checked = None
        else:
            checked = {"by": "export", "when": self.created, "ms": plan["measured_ms"],
                       "within_budget": plan["measured_ms"] <= plan["budget_ms"]}
        return {"budget_ms": plan["budget_ms"], "percentile": plan.get("percentile", 50.0),
                "batch": plan["batch"], "seq_len": plan["seq_len"],
                "precision": plan["precision"], "fidelity": plan["fidelity"],
                "fidelity_metric": plan["fidelity_metric"],
                "machine": (target.get("fingerprint") or {}).get("cpu_model"),
                "for_device": bool(target.get("for_device")), "checked": checked}

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
        # what we write we write whole: a missing field is damage, never a default (but a
        # field added since a version was written is what that version meant)
        from .supernet.config import SuperConfig

        if "config" in data:
            data["config"] = SuperConfig.upgraded(data["config"])
        reject_unknown_fields(cls, data, f"bundle manifest {where}", error, require_all=True)
        hint = "export the bundle again"
        manifest = validated(cls, data, where, error, hint)

        try:  # every field present, none unknown, each by type
            SuperConfig.from_dict(manifest.config, f"{where} config")
        except ShaperError as exc:
            raise error(str(exc)) from None
        problems = [f"{len(manifest.shape)} widths for {manifest.design_space['num_layers']} "
                    "layers" if len(manifest.shape) != manifest.design_space["num_layers"] else "",
                    "" if manifest.default_model in manifest.files else
                    f"default_model {manifest.default_model!r} is not among its files",
                    "" if manifest.inputs == list(manifest.family.inputs) else
                    f"inputs {manifest.inputs} are not a {manifest.family.name} graph's "
                    f"({', '.join(manifest.family.inputs)})"]
        problems = [p for p in problems if p]
        if problems:
            raise error(f"{where} is malformed: {problems[0]}; {hint}")
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
        manifest = cls.from_dict(data, str(folder / MANIFEST), error)
        manifest.check_listing(folder, error)
        return manifest

    def check_listing(self, folder: Path, error: type[ShaperError] = ServingError) -> None:
        """The folder holds exactly the files the manifest lists (plus shaper.json), each a
        regular file: an unlisted file (a model's external data, a tokenizer whose entry was
        deleted) or a symbolic link is refused, never used unchecked."""
        present = {}
        try:
            for entry in folder.iterdir():
                present[entry.name] = entry
        except OSError as exc:
            raise error(f"cannot list bundle {folder}: {exc.strerror or exc}") from None
        for name, entry in sorted(present.items()):
            if entry.is_symlink() or not entry.is_file():
                raise error(f"bundle {folder} holds {name}, which is "
                            f"{'a symbolic link' if entry.is_symlink() else 'not a regular file'}"
                            "; a bundle holds regular files only: export it again")
            if name != MANIFEST and name not in self.files:
                raise error(f"bundle {folder} holds {name}, which {MANIFEST} does not list "
                            "(unchecked files are never used); remove it or export the bundle "
                            "again")
        missing = sorted(set(self.files) - set(present))
        if missing:
            raise error(f"bundle {folder} is missing {', '.join(missing)}, which {MANIFEST} "
                        "lists; export the bundle again")

    def verified(self, folder: Path, name: str, error: type[ShaperError] = ServingError
                 ) -> Path:
        """``folder/name``, its sha256 checked against the manifest before anything parses it."""
        from .io import sha256_file

        if name not in self.files:
            raise error(f"bundle {folder} has no {name!r}; it has {', '.join(self.files)}")
        file = folder / name
        try:
            actual = sha256_file(file)
        except OSError as exc:
            raise error(f"cannot read {file}: {exc.strerror or exc}") from None
        if actual != self.files[name]["sha256"]:
            raise error(f"{file} does not match the sha256 recorded in {MANIFEST}: the file "
                        "was altered or corrupted; export the bundle again")
        return file

    def support_files(self) -> list[str]:
        """Every listed file a model may read beside it: all but the ONNX models."""
        return [n for n, r in self.files.items() if "precision" not in r]
