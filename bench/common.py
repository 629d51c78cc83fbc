"""What the benches share: the CPU line each one prints (every figure depends on the CPU: AVX2-only machines and
AVX-512 bf16/VNNI machines differ 1.5-2x) and clips cut from LDC93S1.

The benches run as scripts (`python bench/bench_x.py`), so this folder is first on sys.path and `import common`
finds this file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
# What TensorFlow's and TFLite's float, bfloat16 and int8 kernels use.
FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8")


def _cpuinfo(key: str) -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(key)), "")
    except OSError:
        return ""


def cpu_flags() -> set[str]:
    return set(_cpuinfo("flags").split())


def cpu_line() -> str:
    """`CPU: <model>, <n> CPUs (<k> for this process); flags: ...; load average ...`"""
    flags = cpu_flags()
    shown = " ".join(f"{f}={f in flags}" for f in FLAGS)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"CPU: {_cpuinfo('model name') or '?'}, {os.cpu_count()} CPUs ({len(os.sched_getaffinity(0))} for this "
            f"process); {shown}; load average {load}")


def ldc_clips(folder: Path, n: int, text=lambda seconds: "she had your dark suit", seed: int = 0):
    """`n` WAVs of 1.5-10 s cut from LDC93S1 (repeated) with a little noise; returns their CSV rows (header first)
    and the total seconds. `text(seconds)` is each clip's transcript."""
    source, rate = sf.read(ROOT / "data/ldc93s1/LDC93S1.wav", dtype="int16")
    long = np.tile(source, 4)
    rng = np.random.default_rng(seed)
    rows, total = ["wav_filename,wav_filesize,transcript"], 0.0
    for i in range(n):
        length = int(rng.uniform(1.5, 10.0) * rate)
        start = int(rng.integers(0, len(long) - length))
        clip = np.clip(long[start:start + length] + rng.normal(0, 30, length), -32768, 32767).astype(np.int16)
        path = folder / f"clip{i:05d}.wav"
        sf.write(path, clip, rate, subtype="PCM_16")
        rows.append(f"{path.name},{path.stat().st_size},{text(length / rate)}")
        total += length / rate
    return rows, total
