"""ONNX Runtime sessions on a named device, checked (needs onnxruntime, never torch).

onnxruntime-gpu lists the CUDA provider even on a machine without a GPU and falls back to the
CPU when it cannot start it. A ``cuda`` request is therefore checked against the providers the
session really uses, and fails rather than silently running on the CPU.
"""

from __future__ import annotations

import math
import platform
from functools import lru_cache
from pathlib import Path

from dataclasses import dataclass

from .errors import DeviceError, check_choice

PRECISIONS = ("fp32", "int8")  # every precision a profile, plan or bundle may have


@dataclass(frozen=True)
class DeviceRuntime:
    """What one device runs: its ONNX Runtime provider, the precisions profiles and plans may
    use there, how int8 is made for it, and why a precision it lacks does not run."""
    provider: str
    precisions: tuple[str, ...]
    int8: str  # how an int8 model for this device is made ("" when it has none)
    not_here: dict[str, str]  # precision -> the one statement every check quotes


# The runtime capability table: every device check, device map and CLI choice reads it.
RUNTIMES = {
    "cpu": DeviceRuntime("CPUExecutionProvider", PRECISIONS,
                         "dynamic quantization (onnxruntime.quantization.quantize_dynamic), "
                         "its format chosen by the CPU's ISA and, where it allows two, by "
                         "the profile's probe (int8_formats)", {}),
    "cuda": DeviceRuntime("CUDAExecutionProvider", ("fp32",), "",
                          {"int8": "ONNX Runtime's dynamic int8 quantization runs on the CPU "
                                   "provider only"}),
}
DEVICES = {name: r.provider for name, r in RUNTIMES.items()}  # device -> provider
DEVICE_PRECISIONS = {name: r.precisions for name, r in RUNTIMES.items()}


def precision_problem(device: str, precision: str) -> str | None:
    """Why ``precision`` cannot run on ``device`` (None when it can): the reason and what is
    allowed there, for a check to raise in its own words."""
    if precision in DEVICE_PRECISIONS.get(device, ()):
        return None
    runtime = RUNTIMES.get(device)
    why = (runtime.not_here.get(precision) if runtime else None) or \
        f"{precision} is not a precision of {device}"
    return f"{why}; allowed on {device}: {', '.join(DEVICE_PRECISIONS.get(device, ()))}"
MAX_THREADS = 1024  # intra-op threads any session (here or on a server) is given
THREADS_PER_CORE_HERE = 4  # a session made on this machine: more is oversubscription
DEFAULT_THREADS = 2  # a profile's intra-op threads where this process may use two cores


@lru_cache(maxsize=1)
def usable_cores() -> int:
    """The cores this process may run on at once: the machine's, narrowed by its CPU affinity
    (taskset, a container's cpuset) and a CPU quota on its cgroup (v1/v2 bandwidth), as
    ``joblib.cpu_count`` and ``cgroup_cpu_quota`` read them; LOKY_MAX_CPU_COUNT lowers it
    further. A quota is rounded down (at least 1, as Go's automaxprocs does): threads beyond
    it run until the period's CPU time is spent, then wait for the next period, which puts
    the wait in the tail. Under a 1-CPU quota two threads ran MiniLM's median at x0.55 of one
    thread's and its p90 at x2.6 (fp32; int8 x0.66 and x6.0; benchmarks/usable_cores.py).
    ``os.cpu_count()`` counts the host's cores, which a 1-CPU container or a pinned process
    cannot use: two intra-op threads on one usable core ran MiniLM at 1 x 128 in 49 ms
    where one thread took 24 ms (Intel Xeon, ``taskset -c 0``, 2026-12-05)."""
    from joblib import cpu_count

    cores = cpu_count(only_physical_cores=False)
    try:  # joblib reads a quota at the mount's root only (a container's); a unit's is deeper
        quota = cgroup_cpu_quota()
    except (ValueError, OSError):  # a cgroup file not as the kernel writes it: not a limit
        quota = None
    if quota is not None:  # rounded down: threads beyond the quota are throttled
        cores = min(cores, math.floor(quota))
    return max(1, cores)


def default_threads() -> int:
    """A profile's intra-op threads when none are asked for: ``DEFAULT_THREADS``, never more
    than the cores this process may use (one thread per usable core at most)."""
    return min(DEFAULT_THREADS, usable_cores())


# Intra-op threads of the one pool every session of this process runs on (ONNX Runtime's
# global thread pool), or None: each session has its own (ONNX Runtime's default). See
# share_one_pool.
_shared_pool: int | None = None


def share_one_pool(threads: int) -> None:
    """Run every session this process makes from now on on one pool of ``threads`` intra-op
    threads (ONNX Runtime's global thread pool). Sessions timed one after another then use the
    same threads, so a turn need not wait for the last session's threads to stop spinning
    (``profiling.protocol.Protocol.pool``). Once a global pool exists ONNX Runtime refuses
    sessions with their own, and its size is fixed: only a process that runs nothing else
    afterwards may call this (``shaperctl profile``'s own process, ``cli.main.console``).
    Measured on the AMD EPYC Zen 4 class (``benchmarks/shared_pool.py``): the same floors
    (shared / own p10 0.987-1.005, p90 median 0.999) in 56% of the time."""
    global _shared_pool
    _refuse_another_pool(threads, "one of")
    if _shared_pool is None:
        from onnxruntime.capi import _pybind_state

        _pybind_state.set_global_thread_pool_sizes(threads, 1)
        _shared_pool = threads


def _refuse_another_pool(threads: int | None, what: str) -> None:
    """Refused: ``what`` (a pool, a session) of ``threads`` intra-op threads in a process
    whose sessions share one pool of another size (None: the pool's own, accepted)."""
    if _shared_pool is not None and threads not in (None, _shared_pool):
        raise DeviceError(f"this process runs every session on one pool of {_shared_pool} "
                          f"intra-op threads and cannot make {what} {threads}")


def shared_pool() -> int | None:
    """The threads of the one pool this process's sessions share, or None (see
    :func:`share_one_pool`)."""
    return _shared_pool


def check_threads(threads: int | None) -> None:
    """Intra-op threads for a session made on this machine: 1 .. 4 x the cores it may use."""
    if threads is None:
        return
    cores = usable_cores()
    most = min(MAX_THREADS, THREADS_PER_CORE_HERE * cores)
    if not 1 <= threads <= most:
        raise DeviceError(f"--threads {threads} is outside 1..{most} (at most "
                          f"{THREADS_PER_CORE_HERE} per core this process may use; it may "
                          f"use {cores})")


NO_LIMIT = 1 << 60  # a cgroup memory limit at or above this is "none" (v1 writes 2**63 - 4096)


def cgroup_folders(controller: str, root: str | Path = "/") -> tuple[str, list[Path]] | None:
    """Where the cgroup limits of ``controller`` ("cpu", "memory") on this process are: the
    version ("v2", or "v1" where a v1 hierarchy holds the controller) and this process's
    cgroup folder with the folders above it up to the mount (a container that sees the
    host's path finds its own limits at the mount's root); None where /proc says no cgroup.
    ``root``: where /proc and /sys are (tests)."""
    root = Path(root)
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    found = None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            version, mount = "v2", root / "sys/fs/cgroup"
            if not (mount / "cgroup.controllers").is_file():
                continue  # a hybrid host's empty v2 tree: the v1 hierarchies hold the limits
        elif controller in controllers.split(","):
            version, mount = "v1", root / "sys/fs/cgroup" / controller
        else:
            continue
        folder = mount / path.lstrip("/")
        above = [d for d in folder.parents if d == mount or mount in d.parents]
        found = (version, [folder, *above])
        if version == "v1":
            break
    return found


def _read(folder: Path, name: str) -> str | None:
    try:
        return (folder / name).read_text().strip()
    except OSError:
        return None


def cgroup_memory_left(root: str | Path = "/") -> int | None:
    """Bytes a memory limit on this process's cgroup still allows (a container's ``docker
    --memory``, a systemd unit's MemoryMax): the limit less what the cgroup uses, the lowest
    over ``cgroup_folders``; None where no limit is set. The usage counts the page cache,
    which the kernel would reclaim first, so the bound errs low."""
    where = cgroup_folders("memory", root)
    if where is None:
        return None
    version, folders = where
    limit_file, usage_file = {"v2": ("memory.max", "memory.current"),
                              "v1": ("memory.limit_in_bytes", "memory.usage_in_bytes")}[version]
    left = []
    for d in folders:
        limit = _read(d, limit_file)
        if limit and limit != "max" and int(limit) < NO_LIMIT:
            left.append(max(0, int(limit) - int(_read(d, usage_file) or 0)))
    return min(left) if left else None


def cgroup_cpu_quota(root: str | Path = "/") -> float | None:
    """CPUs a CPU bandwidth limit on this process's cgroup allows per period (``docker
    --cpus``, a systemd unit's CPUQuota, a Kubernetes CPU limit): quota / period, the lowest
    over ``cgroup_folders``; None where no limit is set."""
    where = cgroup_folders("cpu", root)
    if where is None:
        return None
    version, folders = where
    quotas = []
    for d in folders:
        if version == "v2":
            quota, _, period = (_read(d, "cpu.max") or "max").partition(" ")
        else:
            quota, period = _read(d, "cpu.cfs_quota_us") or "-1", _read(d, "cpu.cfs_period_us")
        if quota not in ("max", "-1") and period and int(quota) > 0 and int(period) > 0:
            quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def available_memory() -> int:
    """Bytes the machine can still give this process: MemAvailable (else total physical
    memory), and no more than a container's memory limit leaves (``cgroup_memory_left``):
    /proc/meminfo inside a container describes the host."""
    import os

    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        left = cgroup_memory_left()
    except (ValueError, OSError):  # a cgroup file not as the kernel writes it: not a limit
        left = None
    return free if left is None else min(free, left)


def check_workload(batch: int, seq_len: int, space: dict) -> None:
    """Refuse, before anything is allocated, a request whose activations would not fit in half
    of the memory left: per token the FFN's and four D-wide tensors, per row and head the
    attention scores, in float32, twice over (inputs and outputs of an operator). The length
    is checked against the model's positions by the caller, who knows its family."""
    per_token = (space["intermediate_size"] + 4 * space["hidden_size"]) * 4 * 2
    scores = space["num_heads"] * seq_len * seq_len * 4 * 2
    need = batch * (seq_len * per_token + scores)
    free = available_memory() // 2
    if need > free:
        most = max(1, free // (seq_len * per_token + scores))
        raise DeviceError(f"batch {batch} x {seq_len} tokens needs about {need / 2**30:.1f} GiB "
                          f"of activations, more than half of the {free * 2 / 2**30:.1f} GiB "
                          f"this machine (or its container's memory limit) has free; at this "
                          f"length at most --batch {most}")
_VNNI = ("avx512_vnni", "avx_vnni")
_X86 = ("avx", "avx2", "fma", "avx512f")
NO_VNNI = "x86 without VNNI"  # the int8 kernels (int8_kernels) whose U8S8 can saturate
# The dynamic int8 formats (onnxruntime.quantization.quantize_dynamic: uint8 activations,
# per-channel weight scales), by name.
INT8_FORMATS = {
    "U8S8": {"activation": "QUInt8", "weight_type": "QInt8", "per_channel": True,
             "reduce_range": False},
    "U8U8": {"activation": "QUInt8", "weight_type": "QUInt8", "per_channel": True,
             "reduce_range": False},
    "U8S8-reduce-range": {"activation": "QUInt8", "weight_type": "QInt8", "per_channel": True,
                          "reduce_range": True},
}


def int8_formats(isa) -> list[dict]:
    """The dynamic int8 formats a CPU with these ISA flags (a fingerprint's ``isa``) may use,
    the default first; a profile's probe times each and keeps another only where it is
    clearly faster (profiling.profile.choose_int8_format), unless ``profile --int8-format``
    names one.

    ONNX Runtime's quantization guide: with uint8 activations and int8 weights (U8S8), the
    x86 AVX2 / AVX-512 kernels without VNNI can saturate (their u8 x s8 multiply-add adds
    pairs in 16 bits), and it advises U8U8 or reduce_range (7-bit weights) there. So x86
    CPUs without VNNI may use either, U8U8 by default (the more faithful); VNNI CPUs and ARM
    use U8S8. Scales are per channel everywhere. Measured on MiniLM:

    - AMD EPYC Zen 2 (AVX2): embeddings of 200 BBC articles, mean cosine to fp32 U8U8 0.9947,
      U8S8-reduce-range 0.9934, none faster than another beyond noise; per-tensor scales lose
      (0.980 U8U8, 0.957 U8S8). A sentiment classifier: label agreement U8U8 95.8%,
      reduce-range 92.9%.
    - The Intel Xeon's cores with AVX2 only, and with AVX-512 but no VNNI
      (benchmarks/masked_isa.py; a sentiment classifier, 1,275 reviews): U8S8-reduce-range ran
      1.24-1.26x (AVX2) and 1.21-1.33x (AVX-512) faster than U8U8, where U8U8 bought 1.21-1.45x
      over fp32 (AVX2) and 0.95-1.09x (AVX-512); agreement 92.4% against U8U8's 95.5%,
      accuracy 0.7906 against 0.7961 (fp32's). Faster is worth a probe; the plan judges
      fidelity.
    - An Intel AVX-512/VNNI/AMX CPU (benchmarks/int8_formats.py): U8U8 4x more faithful in its
      logits but no faster than fp32, U8S8 2.1-2.5x faster: VNNI CPUs keep U8S8.
    """
    kernels = int8_kernels(isa)
    if kernels == NO_VNNI:
        why = f"{kernels} (U8S8 can saturate)"
        return [{"name": "U8U8", **INT8_FORMATS["U8U8"], "why": f"{why}: U8U8 by default"},
                {"name": "U8S8-reduce-range", **INT8_FORMATS["U8S8-reduce-range"],
                 "why": f"{why}: U8S8 with 7-bit weights"}]
    return [{"name": "U8S8", **INT8_FORMATS["U8S8"], "why": "VNNI or non-x86: U8S8"}]


def int8_kernels(isa) -> str:
    """Which family of ONNX Runtime's int8 matrix kernels (MLAS's QGEMM) a CPU with these ISA
    flags runs: AMX tiles (U8S8; small products fall back to VNNI), VNNI, x86 without VNNI
    (AVX2 / AVX-512 multiply-adds through 16 bits), or another architecture's. What int8 buys
    over fp32 changes with shape differently in each, so a profile transfers int8 from a
    source of the same family: the BERT-base space from the Intel AMX profile alone was
    UNRELIABLE in int8 on the AMD Zen 4 class (VNNI, sessions 39 and 43) and on its cores
    masked to AVX2 (twice, session 46: the scaled source 11.7-13.5% off), and reliable with
    the Zen 5 (VNNI) or the Zen 2 (AVX2) profile beside it (the scaled sources 3.8-4.2%)."""
    flags = set(isa or ())
    if flags & set(_X86) and not flags & set(_VNNI):
        return NO_VNNI
    if "amx_int8" in flags:
        return "AMX"
    return "VNNI" if flags & set(_VNNI) else "non-x86"


def int8_format(isa) -> dict:
    """The default dynamic int8 format of a CPU with these ISA flags (``int8_formats``)."""
    return int8_formats(isa)[0]


def int8_format_named(record: dict, why: str) -> dict:
    """The format a profile or bundle's int8 record (quantize.int8_record) describes, named."""
    for name, fmt in INT8_FORMATS.items():
        if all(record.get(k, False if k == "reduce_range" else None) == v
               for k, v in fmt.items() if k != "activation"):
            return {"name": name, **fmt, "why": why}
    raise ValueError(f"no dynamic int8 format has weights {record.get('weight_type')!r}, per "
                     f"channel {record.get('per_channel')!r}, reduce range "
                     f"{record.get('reduce_range')!r}")


ISA_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
             "amx_tile", "amx_int8", "avx_vnni", "asimd", "sve")


@lru_cache(maxsize=1)
def cpu_model_and_flags() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "Model", "Hardware") and model in ("", platform.machine()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, sorted(f for f in ISA_FLAGS if f in flags)


@lru_cache(maxsize=1)
def cpu_id() -> str | None:
    """The CPU's microarchitecture as the kernel reports it: x86 vendor, family and model
    (AMD's Zen 2, 4 and 5 are families 23, 25 and 26, and a cloud VM's model name is often
    just "AMD EPYC"), an ARM core's implementer and part; None where /proc/cpuinfo says
    neither. Two CPUs with the same ISA flags can be generations apart in speed."""
    keys = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("vendor_id", "cpu family", "model", "CPU implementer", "CPU part"):
                    keys.setdefault(key, value.strip())
                elif not line.strip() and keys:
                    break  # the first processor is enough
    except OSError:
        return None
    if "vendor_id" in keys and "cpu family" in keys:
        return f"{keys['vendor_id']} family {keys['cpu family']} model {keys.get('model', '?')}"
    if "CPU implementer" in keys:
        return f"ARM implementer {keys['CPU implementer']} part {keys.get('CPU part', '?')}"
    return None


def padded_tokenizer(tokenizer_json: str, max_length: int, pad_token_id: int,
                     fixed: bool = False):
    """A ``tokenizers`` tokenizer from tokenizer.json text that cuts every text at
    ``max_length`` tokens and pads with ``pad_token_id`` (BERT's 0, RoBERTa's 1: the model's
    own, never the library's default) a batch to its longest text or, ``fixed``, every text
    to ``max_length``."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(tokenizer_json)
    tok.enable_truncation(max_length)
    tok.enable_padding(pad_id=pad_token_id, pad_token=tok.id_to_token(pad_token_id) or "[PAD]",
                       length=max_length if fixed else None)
    return tok


def model_tokenizer(config, tokenizer_files: dict[str, bytes], max_length: int,
                    fixed: bool = False):
    """A model's own tokenizer (``config``: a super network's or graph's, for its positions
    and pad id) from the tokenizer.json among its ``tokenizer_files``, cutting at
    ``max_length`` tokens (at most the model's positions) and padding as
    ``padded_tokenizer``; None when the files hold no tokenizer.json."""
    if "tokenizer.json" not in tokenizer_files:
        return None
    return padded_tokenizer(tokenizer_files["tokenizer.json"].decode(),
                            min(max_length, config.max_tokens), config.pad_token_id, fixed)


def token_lengths(config, tokenizer_files: dict[str, bytes], texts, pairs=None
                  ) -> list[int] | None:
    """Tokens per text (or pair) as a bundle serves it: its own tokenizer, cut at the model's
    positions; None when the files hold no tokenizer.json."""
    tok = model_tokenizer(config, tokenizer_files, config.max_tokens)
    if tok is None:
        return None
    items = list(texts) if pairs is None else list(zip(texts, pairs))
    return [sum(e.attention_mask) for e in tok.encode_batch(items)]


def text_feeds(config, tok, texts, pairs=None) -> dict:
    """The model's int64 inputs by name (numpy) for ``texts``, or for text pairs when
    ``pairs`` is given, through ``tok`` (``model_tokenizer``)."""
    items = list(texts) if pairs is None else list(zip(texts, pairs))
    return config.family.feeds(tok.encode_batch(items))


def make_session(model: str | Path | bytes, device: str = "cpu", threads: int | None = None,
                 sequential: bool = True):
    """An ``onnxruntime.InferenceSession`` whose first provider is the one ``device`` names.

    ``threads`` fixes intra-op threads (None: ONNX Runtime's default); ``sequential`` runs
    operators one after another, the reproducible setting for timing.
    """
    import onnxruntime as ort

    check_choice("device", device, DEVICES, DeviceError)
    check_threads(threads)
    provider = DEVICES[device]
    if provider not in ort.get_available_providers():
        raise DeviceError(f"device {device!r} needs {provider}, which this onnxruntime build "
                          f"lacks (it has {', '.join(ort.get_available_providers())})")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the fallback warning is checked below instead
    if _shared_pool is not None:  # every session on the process's one pool (share_one_pool)
        _refuse_another_pool(threads, "a session of")
        options.use_per_session_threads = False
    elif threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if sequential:
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = [provider] if device == "cpu" else [provider, DEVICES["cpu"]]
    source = model if isinstance(model, bytes) else str(model)
    if device != "cpu":
        # A provider that fails to start logs several lines from C++; our error says it once.
        ort.set_default_logger_severity(4)
    try:
        session = ort.InferenceSession(source, options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise DeviceError(f"ONNX Runtime could not load the model on {device}: "
                          f"{str(exc).strip().splitlines()[0]}") from None
    finally:
        ort.set_default_logger_severity(2)
    if session.get_providers()[0] != provider:
        raise DeviceError(f"device {device!r} was requested but {provider} did not start "
                          "(no usable GPU, or CUDA/cuDNN libraries missing); refusing to run "
                          f"on {session.get_providers()[0]} instead")
    return session
