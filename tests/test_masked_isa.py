"""benchmarks/masked_isa.py: a device with less ISA than this machine, as the product sees it.
Needs Linux x86-64 with CPUID faulting, gcc and root; skipped elsewhere, saying which."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "masked_isa.py"


def _missing() -> str | None:
    try:
        flags = re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        return "no /proc/cpuinfo"
    if not flags or "cpuid_fault" not in flags.group(1).split():
        return "no CPUID faulting on this CPU or kernel"
    if "avx512f" not in flags.group(1).split():
        return "this CPU has no AVX-512 to hide"
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("gcc", "unshare", "mount")):
        return "needs root, gcc, unshare and mount"
    return None


@pytest.mark.skipif(_missing() is not None, reason=str(_missing()))
@pytest.mark.parametrize("isa", ["avx2", "avx512"])
def test_the_product_sees_the_masked_isa_and_its_int8_formats(tmp_path, isa):
    probe = ("import json; from shaper_deploy.runtime import cpu_model_and_flags, int8_formats; "
             "isa = cpu_model_and_flags()[1]; "
             "print(json.dumps({'isa': isa, 'formats': [f['name'] for f in int8_formats(isa)]}))")
    r = subprocess.run([sys.executable, str(HARNESS), "--isa", isa, "--work", str(tmp_path),
                        "--", sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout)
    assert "avx2" in seen["isa"] and not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(seen["isa"])
    assert ("avx512f" in seen["isa"]) == (isa == "avx512")
    assert seen["formats"] == ["U8U8", "U8S8-reduce-range"]


def test_the_harness_refuses_in_one_line():
    r = subprocess.run([sys.executable, str(HARNESS), "--isa", "avx2"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("masked_isa: ")
