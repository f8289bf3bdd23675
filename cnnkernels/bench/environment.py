"""The header every benchmark result carries: the device, the versions, the
commit, the run's settings and the timer."""

from __future__ import annotations

import datetime
import importlib.util
import os
import platform
import subprocess
from pathlib import Path

import torch

import cnnkernels
from cnnkernels import _ext
from cnnkernels.bench.driver import (
    Settings,
    dtype_name,
    gemm_core_rate,
    roofline_for,
    timer_description,
)


def _git_commit() -> str:
    """$CNNK_COMMIT if set (machines without the .git folder), else HEAD of
    the checkout the package lives in, marked +dirty with uncommitted changes."""
    if os.environ.get("CNNK_COMMIT"):
        return os.environ["CNNK_COMMIT"]
    package = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=package, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty.strip() else "")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()


def environment(settings: Settings, command: str = "bench") -> dict:
    """Where, with what, on which commit, and the run's settings; ``command``
    (bench, verify) says what the rows are."""
    device = settings.device
    cuda = device.type == "cuda"
    triton_version = None
    if importlib.util.find_spec("triton") is not None:
        import triton

        triton_version = triton.__version__
    cpu = {}
    roofline = None if cuda or command != "bench" else roofline_for(device)
    if roofline is not None:  # the cpu backend's roofline and its GEMM core
        cpu = {"cpu_isa": _ext.cpu_isa(),
               "cpu_peak_gflops": {dtype_name(d): round(f / 1e9, 1)
                                   for d, f in roofline.flops.items()},
               "cpu_copy_gbps": round(roofline.bandwidth / 1e9, 1),
               "gemm_core": gemm_core_rate()}
    return {
        **cpu,
        "command": command,
        "device": device_name(device),
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark if cuda else None,
        "tf32": settings.tf32,  # cudnn.allow_tf32 and cuda.matmul.allow_tf32, set for the run
        "algorithms": settings.algorithms,
        "python": platform.python_version(),
        "cnnkernels": cnnkernels.__version__,
        "commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ops": settings.ops,
        "dtypes": [dtype_name(d) for d in settings.dtypes],
        "layouts": settings.layouts,
        "batch": settings.batch,
        "directions": settings.directions,
        "backends": settings.backends,
        "excluded": settings.excluded,
        "quick": settings.quick,
        "timer": timer_description(device, settings.quick),
    }
