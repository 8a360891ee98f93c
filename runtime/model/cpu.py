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


# The integer paths onnxruntime's x86 INT8 kernels take. Without VNNI, U8S8 products are
# added in pairs into int16 (``vpmaddubsw``, AVX2 and AVX-512BW alike) and saturate when both
# are large; VNNI and AMX add into int32 and never saturate. ARM's dot products are exact too.
SATURATING = "avx2-u8s8"
PATH_TEXT = {
    "vnni": "VNNI: uint8 x int8 products added in int32, exact",
    SATURATING: "no VNNI: uint8 x int8 products added in pairs in int16 (vpmaddubsw), which saturates "
                "when both are large",
    "arm-dot": "ARM dot-product: exact int32 sums",
    "other": "no INT8 dot-product or AVX2 kernel flags listed",
}


def int8_path(flags: list[str] | None = None) -> str:
    """Which integer path a U8S8 model takes on a CPU with ``flags`` (default: this one's):
    "vnni", "avx2-u8s8" (x86 without VNNI), "arm-dot" or "other"."""
    flags = int8_flags() if flags is None else flags
    if any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8")):
        return "vnni"
    if "avx2" in flags:
        return SATURATING
    if any(f in flags for f in ("asimddp", "i8mm")):
        return "arm-dot"
    return "other"


def int8_layout(quantization: dict) -> str:
    """A short name for a quantized file's integer layout, from its saved quantization settings
    (``midas_onnx.quantization``): "u8s8-w7" (7-bit weights), "u8s8-w8", "u8u8", ... Settings
    saved before ``reduce_range`` existed had 8-bit weights."""
    act = quantization.get("activation_type", "uint8")
    weight = quantization.get("weight_type", "int8")
    bits = 7 if quantization.get("reduce_range", False) else 8
    return f"{act[0]}8{weight[0]}8-w{bits}".replace("i8", "s8")


def layout_on_cpu(layout: str, flags: list[str] | None = None) -> str:
    """What a file's INT8 layout means on a CPU with ``flags`` (default: this one's), in words."""
    if layout.endswith("-w7") or layout.startswith("u8u8"):
        return ("7-bit weights: no pair of products can saturate, so the same integers on every x86 CPU"
                if layout.endswith("-w7") else "uint8 weights: no int16 pair sums on any x86 path (slower kernels)")
    if int8_path(flags) == SATURATING:
        return ("8-bit weights on a CPU without VNNI: sums of large products saturate, so this file is "
                "less faithful here than on VNNI CPUs; quantize again with the default 7-bit weights")
    return ("8-bit weights: exact on this CPU; on x86 CPUs without VNNI its sums can saturate "
            "(quantize with the default 7-bit weights for a file that is faithful on every CPU)")
