"""What the CPU offers for INT8 inference: the instruction sets that decide whether static
INT8 beats fp32 (AVX2 without VNNI gains ~1.6x here; AVX-512 VNNI ~2.6x; ARM dot-product).
Printed with every benchmark figure and quantization report."""

from __future__ import annotations

import platform
from pathlib import Path

# /proc/cpuinfo flag names (x86 "flags", ARM "Features") that matter for INT8 kernels.
INT8_FLAGS = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8",
              "asimd", "asimddp", "i8mm", "sve")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model", "Hardware")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def int8_flags() -> list[str]:
    """The INT8-relevant flags this CPU reports (empty where /proc/cpuinfo is unreadable)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    have: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            have.update(line.split(":", 1)[1].split())
    return [f for f in INT8_FLAGS if f in have]


# VNNI (x86) or dot-product (ARM): the instructions that make INT8 convolutions fast.
DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")


def dot_product_flags(flags: list[str] | None = None) -> list[str]:
    """The INT8 dot-product instructions among ``flags`` (default: this CPU's)."""
    flags = int8_flags() if flags is None else flags
    return [f for f in flags if f in DOT_PRODUCT_FLAGS]


def has_int8_dot_product(flags: list[str] | None = None) -> bool:
    return bool(dot_product_flags(flags))
