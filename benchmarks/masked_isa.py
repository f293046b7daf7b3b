"""Run a command as a CPU with less ISA than this one: a device the product has not seen, made
on this machine. ``--isa avx2``: AVX2 + FMA only (no AVX-512, VNNI, AMX, native bf16), the ISA
of an AMD EPYC Zen 2 or an Intel Haswell to Comet Lake; ``--isa avx512``: AVX-512 without VNNI,
bf16 or AMX (an Intel Skylake-SP), where ONNX Runtime warns that U8S8 int8 can saturate.

Two things make the device, both as a hypervisor's CPU model would:

- what the process asks the CPU: ``cpuid_mask.c``, built here with gcc and preloaded into the
  command and every program it starts, turns on the kernel's CPUID faulting and answers each
  CPUID instruction with the level's feature bits cleared, so ONNX Runtime's MLAS (and numpy,
  oneDNN) dispatch the kernels that ISA has, on this machine's cores;
- what the kernel says: ``/proc/cpuinfo`` with those flags removed, bind-mounted over the real
  one in a private mount namespace (``unshare -m``), so the profile fingerprint, ``profiles
  list`` and the int8 format (``runtime.int8_format``) see that ISA.

The cores' microarchitecture stays this machine's (its caches, clocks, how fast each
instruction runs), and ``cpu_id`` still names it: this is an ISA, not a Zen 2. Needs Linux on
x86-64 with the ``cpuid_fault`` flag, gcc and root (for the mount namespace); each missing one is
refused in one line. Before the command runs, a probe in the masked process checks that numpy
sees the level and /proc/cpuinfo lacks the removed flags. A program that installs its own
SIGSEGV handler takes the CPUID faults over and crashes: run pytest with ``-p
no:faulthandler``; torch's multi-process launcher (``train --nproc``) enables faulthandler in
its workers, so those cannot run masked.

    .venv/bin/python benchmarks/masked_isa.py --isa avx2 -- make demo RUNS=/tmp/avx2-demo
    .venv/bin/python benchmarks/masked_isa.py --isa avx2 -- .venv/bin/shaperctl profiles list
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).with_name("cpuid_mask.c")
# /proc/cpuinfo flags each level removes (the CPUID bits cpuid_mask.c clears).
REMOVED = {
    "avx512": r"avx512(ifma|vbmi|_vbmi2|_vnni|_bitalg|_vpopcntdq|_bf16|_fp16|_vp2intersect"
              r"|_4vnniw|_4fmaps|pf|er)|amx_\w+|avx_vnni\w*|avx_ifma|avx_ne_convert|gfni|vaes"
              r"|vpclmulqdq",
    "avx2": r"avx512\w*|amx_\w+|avx_vnni\w*|avx_ifma|avx_ne_convert|gfni|vaes|vpclmulqdq",
}
# numpy's name for a feature the level must lack, and one it must keep.
PROBE = {"avx2": ("AVX512F", "AVX2"), "avx512": ("AVX512VNNI", "AVX512F")}


def fail(message: str) -> None:
    print(f"masked_isa: {message}", file=sys.stderr)
    raise SystemExit(1)


def masked_cpuinfo(text: str, level: str) -> str:
    """/proc/cpuinfo with the level's flags taken out of every ``flags`` line."""
    pattern = re.compile(rf" ({REMOVED[level]})(?= |$)")
    return "".join(pattern.sub("", line) if line.startswith("flags") else line
                   for line in text.splitlines(keepends=True))


def preflight() -> str:
    """The real /proc/cpuinfo, once everything the mask needs is there."""
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        fail(f"needs Linux on x86_64, not {platform.system()} on {platform.machine()}")
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError as e:
        fail(f"cannot read /proc/cpuinfo: {e.strerror}")
    if not re.search(r"^flags\s*:.*\bcpuid_fault\b", text, re.M):
        fail("this kernel or CPU has no CPUID faulting (no cpuid_fault in /proc/cpuinfo)")
    for tool in ("gcc", "unshare", "mount"):
        if shutil.which(tool) is None:
            fail(f"needs {tool} on PATH")
    if os.geteuid() != 0:
        fail("needs root, for the private mount namespace that hides /proc/cpuinfo's flags")
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 usage="%(prog)s --isa {avx2,avx512} [--work DIR] -- COMMAND...")
    ap.add_argument("--isa", choices=sorted(REMOVED), required=True)
    ap.add_argument("--work", type=Path, default=None,
                    help="where the library and the masked cpuinfo go (default /tmp/masked-isa)")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        fail("name the command to run after --")
    text = preflight()
    work = args.work or Path("/tmp/masked-isa")
    work.mkdir(parents=True, exist_ok=True)
    library, cpuinfo = work / f"cpuid_mask_{args.isa}.so", work / f"cpuinfo_{args.isa}"
    built = subprocess.run(["gcc", "-O2", "-Wall", "-shared", "-fPIC", "-o", str(library),
                            str(SOURCE)], capture_output=True, text=True)
    if built.returncode:
        fail(f"gcc could not build {SOURCE.name}: {built.stderr.strip().splitlines()[-1]}")
    cpuinfo.write_text(masked_cpuinfo(text, args.isa))
    env = {**os.environ, "MASKED_ISA": args.isa,
           "LD_PRELOAD": " ".join(filter(None, [str(library), os.environ.get("LD_PRELOAD")]))}
    wrap = ["unshare", "-m", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /proc/cpuinfo && exec "$@"', str(cpuinfo)]
    lacks, keeps = PROBE[args.isa]
    probe = ("import re, numpy._core._multiarray_umath as m; f = m.__cpu_features__; "
             "flags = re.search(r'^flags.*', open('/proc/cpuinfo').read(), re.M).group(0); "
             f"print(f['{lacks}'], f['{keeps}'], bool(re.search(r' ({REMOVED[args.isa]})( |$)', "
             "flags)))")
    seen = subprocess.run([*wrap, sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True)
    if seen.returncode or seen.stdout.split() != ["False", "True", "False"]:
        fail(f"the mask did not take (numpy {lacks}, {keeps}, cpuinfo still flagged: "
             f"{seen.stdout.strip() or seen.stderr.strip()[-200:]})")
    print(f"masked_isa: running as {args.isa} ({lacks} hidden from CPUID and /proc/cpuinfo): "
          + " ".join(command), file=sys.stderr)
    os.execvpe("unshare", [*wrap, *command], env)


if __name__ == "__main__":
    main()
