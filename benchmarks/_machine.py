"""What machine a benchmark ran on, and its own ceiling measured in the same run.

Machines differ between sessions (some CPUs have AMX bf16 units, some only AVX-512 BF16/VNNI, some
neither), so every benchmark prints the CPU model, the flags that decide which precisions can pay,
the load average (other processes may share the cores), and the matmul GFLOP/s this machine reaches
right now in fp32 and bf16 (and int8 where torch has a CPU int8 matmul): figures are then read as a
fraction of that ceiling, and ratios against a baseline measured in the same run.
"""
from __future__ import annotations

import datetime
import os
import platform
import time

import torch

FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def cpu_info() -> dict:
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model, "flags": [f for f in FLAGS if f in flags], "missing": [f for f in FLAGS if f not in flags],
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "isa": torch.backends.cpu.get_cpu_capability()}


def _gflops(fn, flops: float, seconds: float) -> float:
    fn()  # warm-up (oneDNN primitive creation, page faults)
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return flops * n / dt / 1e9


def matmul_ceiling(n: int = 1024, seconds: float = 1.0) -> dict:
    """GFLOP/s of an n x n x n matmul in fp32, bf16 and (if torch can) int8 on the CPU, right now."""
    out = {}
    flops = 2.0 * n ** 3
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        out[name] = _gflops(lambda: torch.mm(a, b), flops, seconds)
    try:  # int8 x int8 -> int32 (what dynamic quantisation's Linear runs on VNNI)
        a = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        b = torch.randint(-128, 127, (n, n), dtype=torch.int8)
        out["int8"] = _gflops(lambda: torch._int_mm(a, b), flops, seconds)  # GOP/s
    except Exception:
        out["int8"] = float("nan")
    return out


def header(title: str, ceiling: bool = True) -> dict:
    """Print and return the machine block every benchmark starts with."""
    info = cpu_info()
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    info["load_start"] = os.getloadavg()
    print(f"== {title} ({info['date']})")
    print(f"cpu: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads, "
          f"ISA {info['isa']})")
    print(f"flags: {' '.join(info['flags'])}; absent: {' '.join(info['missing']) or '-'}")
    if ceiling:
        info["ceiling"] = matmul_ceiling()
        c = info["ceiling"]
        print(f"ceiling (1024^3 matmul, now): fp32 {c['fp32']:.1f} GFLOP/s, bf16 {c['bf16']:.1f} GFLOP/s, "
              f"int8 {c['int8']:.1f} GOP/s (bf16/fp32 {c['bf16'] / c['fp32']:.2f}x)")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in info['load_start'])} "
          "(other processes share these cores; trust ratios measured in this run)")
    return info


def footer(info: dict) -> None:
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def peak_rss_mb() -> float:
    """This process's peak resident memory (ru_maxrss, KiB on Linux): counts numpy and faiss buffers
    that tracemalloc does not see."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """This process's resident memory now (VmRSS), for 'what the data alone takes'."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")
