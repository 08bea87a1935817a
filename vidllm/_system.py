"""What machine this is, as far as training speed and numerics depend on it.

Training records and ``vidllm info`` carry it: the same preset, package versions and seed give
other numbers on a CPU whose bfloat16 kernels differ (AMX against AVX512-BF16), and run at
another speed, so a recorded time or loss means little without the CPU it came from.
"""

from __future__ import annotations

import platform
from pathlib import Path

# CPU flags that decide which float and bfloat16 kernels torch picks
_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_info() -> dict[str, object]:
    """``{"model", "isa", "flags"}``: the CPU model name, torch's chosen vector ISA and which of a
    few flags the CPU has (Linux's ``/proc/cpuinfo``; model and flags are empty elsewhere)."""
    import torch

    model, flags = platform.processor(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                model = value.strip()
            elif key == "flags":
                flags = set(value.split())
                break
    return {
        "model": model,
        "isa": torch.backends.cpu.get_cpu_capability(),
        "flags": [f for f in _FLAGS if f in flags],
    }


__all__ = ["cpu_info"]
