"""Pieces shared by the benchmark scripts: child processes, machine and version info."""

from __future__ import annotations

import importlib.metadata as _md
import json
import os
import platform
import resource
import subprocess
import sys
import time


def run_result_child(cmd: list[str], env: dict, timeout: float, tail_lines: int = 5) -> dict:
    """Run one measured method in a fresh process; it prints ``RESULT {json}`` as its last word."""
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return {"skipped": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - t
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            res["process_wall_s"] = round(wall, 3)
            return res
    tail = (p.stderr or p.stdout).strip().splitlines()[-tail_lines:]
    return {"skipped": f"exit code {p.returncode}: " + " | ".join(tail)}


def versions(names) -> dict:
    out = {}
    for name in names:
        try:
            out[name] = _md.version(name)
        except _md.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    info = {"cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "machine": platform.machine()}
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def peak_rss_mib() -> tuple[float, float]:
    """(own peak RSS, largest waited-for child's peak RSS) in MiB.

    Own peak from VmHWM where there is /proc: getrusage(RUSAGE_SELF) of a freshly
    spawned process can still report the parent's peak (Linux keeps the pre-exec
    high-water mark).
    """
    unit = 1 if sys.platform == "darwin" else 1024
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 2**20
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    own = int(line.split()[1]) / 1024
    except OSError:
        pass
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * unit / 2**20
    return round(own, 1), round(kids, 1)
