"""What a benchmark's numbers were measured on: CPU, device, thread settings and library versions."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch
import transformers

from ldrop.budgets.cost import cpu_name

#: Environment variables that change CPU timings a lot (spin-waiting OpenMP threads on a busy machine).
THREAD_ENV = (
    "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "MKL_NUM_THREADS",
    "CUDA_VISIBLE_DEVICES",
)


def machine_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The machine, to record next to the numbers measured on ``device``."""
    device = torch.device(device)
    cpu = cpu_name()
    return {
        "cpu": cpu, "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "platform": platform.platform(),
        "environment": {name: os.environ[name] for name in THREAD_ENV if name in os.environ},
    }
