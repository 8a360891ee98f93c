"""A model's outputs on another x86 CPU's integer path, by emulation.

onnxruntime picks its INT8 kernels from the CPU's features (CPUID): with VNNI, uint8 x int8
products are added in int32; without it (AVX2, or AVX-512 without VNNI) they are added in
pairs in int16 and can saturate. The same file can therefore give other depth on a Zen 3 EPYC
than on a Zen 4, and a machine of one kind cannot see the other's outputs. Debian's
``qemu-user`` runs this Python on an emulated CPU model whose CPUID has no AVX-512 and no VNNI
(``EPYC-Milan``: Zen 3, AVX2 + FMA), so onnxruntime takes the AVX2 path exactly as on that
CPU. Emulation is slow (seconds per 256x256 inference) and says nothing about speed; the
outputs are what that CPU computes.

    run_emulated(model, inputs) -> (outputs, features of the emulated CPU)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
EMULATED_CPU = "EPYC-Milan"  # AMD Zen 3: AVX2 + FMA, no AVX-512, no VNNI
QEMU = "qemu-x86_64"
# numpy's own CPUID reading, the flags that decide onnxruntime's integer path
FEATURES = ("AVX2", "FMA3", "AVX512F", "AVX512BW", "AVX512VNNI")


def emulator() -> str | None:
    """The qemu-user binary, or None where it is not installed (Debian: ``apt install qemu-user``)."""
    return shutil.which(QEMU)


def run_emulated(model: str | Path, inputs: list[np.ndarray], cpu: str = EMULATED_CPU, threads: int = 2,
                 timeout_s: float = 1800) -> tuple[list[np.ndarray], dict[str, bool]]:
    """Each input through ``model`` (onnxruntime, ``threads`` threads) on the emulated ``cpu``.
    Returns the outputs and the CPU features the emulated process saw (``FEATURES``)."""
    qemu = emulator()
    if qemu is None:
        raise RuntimeError(f"{QEMU} not found: install Debian's qemu-user (apt install qemu-user)")
    with tempfile.TemporaryDirectory(prefix="midas-emulated-") as tmp:
        src, dst = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(src, *inputs)
        cmd = [qemu, "-cpu", cpu, os.path.realpath(sys.executable), "-m", "benchmarks.emulated_cpu",
               str(Path(model).resolve()), str(src), str(dst), str(threads)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.splitlines() if "TCG doesn't support" not in ln]
            raise RuntimeError(f"emulated run failed ({proc.returncode}): " + "\n".join(lines[-20:]))
        with np.load(dst) as out:
            outputs = [out[f"arr_{i}"] for i in range(len(inputs))]
            features = json.loads(str(out["features"]))
    return outputs, features


def _cpu_features() -> dict[str, bool]:
    """The CPU features this process sees, from numpy's CPUID reading (a private table, guarded:
    no public API names the features the running CPU reports)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as table
    except ImportError:
        return {}
    return {name: bool(table.get(name, False)) for name in FEATURES}


def _worker(model: str, src: str, dst: str, threads: str) -> None:
    """Inside the emulator: run every input and save the outputs with the features seen."""
    from runtime.model.metadata import INPUT_NAME
    from runtime.model.session import create_session

    session = create_session(model, threads=int(threads))
    with np.load(src) as data:
        outs = [session.run(None, {INPUT_NAME: data[f"arr_{i}"]})[0] for i in range(len(data.files))]
    np.savez(dst, *outs, features=np.array(json.dumps(_cpu_features())))


if __name__ == "__main__":
    _worker(*sys.argv[1:5])
