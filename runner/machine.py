"""What a run (run.json) or an export (the model card) was made on: the machine and the library
versions, written the same way in both records."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch


def version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions(*dists: str) -> dict[str, str | None]:
    """``{"python": ..., dist: version, ...}``; torch's as the running torch reports it."""
    return {"python": platform.python_version(), **{d: torch.__version__ if d == "torch" else version(d) for d in dists}}


def machine() -> dict[str, Any]:
    """The platform, its CPU count and the first GPU torch sees (None without one)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"platform": platform.platform(), "cpus": os.cpu_count(), "gpu": gpu}


def cpu_name() -> str:
    """The CPU model and its logical core count, for latency figures."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} logical cores)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"


def load_average() -> float | None:
    """How busy the machine is (other processes make timings slower and noisier)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None
