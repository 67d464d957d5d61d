"""The machine a benchmark ran on, for every benchmark's JSON output."""

from __future__ import annotations

import importlib
import os
import platform
from pathlib import Path

LIBRARIES = ("numpy", "pandas", "scipy", "torch", "faiss", "lightgbm", "ray", "fastapi")


def machine_info(libraries: tuple[str, ...] = LIBRARIES) -> dict:
    """Python, platform, CPU model and count, and the versions of the given libraries (when installed)."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in libraries:
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception:  # not installed, or fails to import: leave it out
            continue
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "libraries": versions,
    }
