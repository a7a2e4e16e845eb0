"""How bench.gpu measures: waiting for the device, percentiles, memory, and what the machine and versions are."""
from __future__ import annotations

import os
import platform

import numpy as np


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def pct(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def memory(device: str) -> dict:
    if device.startswith("cuda"):
        import torch

        return {"allocated_gb": torch.cuda.memory_allocated() / 2**30,
                "peak_gb": torch.cuda.max_memory_allocated() / 2**30}
    with open("/proc/self/statm") as f:
        return {"rss_gb": int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30}


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def environment(device: str) -> dict:
    import nemo
    import torch
    import transformers

    env = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
           "nemo": nemo.__version__, "device": device, "cpu_count": os.cpu_count()}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_memory_gb"] = torch.cuda.get_device_properties(0).total_memory / 2**30
    return env
