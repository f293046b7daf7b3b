"""A ``shaperctl serve`` process on 127.0.0.1 for the serving benchmarks (imported by
serve_batching.py and serve_load.py, which run from this folder)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(bundle: Path, port: int, log, *extra: str) -> tuple[subprocess.Popen, float]:
    """Start serving ``bundle`` as model ``m``; the process and the seconds until ready."""
    t = time.perf_counter()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("shaperctl")), "serve",
                             str(bundle), "--name", "m", "--http-port", str(port), *extra],
                            stdout=subprocess.DEVNULL, stderr=log)
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).ok:
                return proc, time.perf_counter() - t
        except requests.ConnectionError:
            time.sleep(0.05)
        if proc.poll() is not None or time.perf_counter() - t > 120:
            raise SystemExit("the server did not start")
