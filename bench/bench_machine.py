"""This machine's bounds: matmul rate (fp32, bf16) on all cores and memory bandwidth.

    .venv/bin/python bench/bench_machine.py

Compute: square matmuls (`--size`, default 4096: 137 GFLOP each), one warm-up, then `--repeats`,
best and median reported as GFLOP/s (2·n³ FLOP per matmul): fp32 through torch.matmul (MKL) and
through oneDNN (what vLLM's CPU backend calls; MKL's fp32 GEMM skips AVX-512 on AMD CPUs and
reaches about half), bf16 through torch.matmul (oneDNN). Then the same at the shape of one
decode step of SmolLM2-135M at batch 64 (64×576 · 576×1536, the MLP up-projection), to show
what small, skinny GEMMs reach.

Memory: arrays of `--mib` MiB (default 1024, far above the 32 MiB L3): read = torch.sum of a
float32 array (all threads), copy = torch copy_ (all threads) counting read + write bytes, and the
same with numpy on one thread. Write-allocate traffic is not counted, as in STREAM.

Prints one Markdown table and the load averages (1, 5, 15 min) before and after: this machine is
shared, so a load above ~0.5 means someone else was computing at the same time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import torch
from machine_info import cpu_description, cpu_flags


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096, help="n of the n×n matmuls")
    parser.add_argument("--mib", type=int, default=1024, help="array size for bandwidth, MiB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads"
    )
    return parser.parse_args(argv)


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def best_of(repeats: int, fn, *args):
    """(best wall time of `repeats` calls of fn(*args), the last call's result)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def timed(fn, repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _gemm_callable(a: torch.Tensor, b: torch.Tensor, library: str):
    """A zero-argument function computing a @ b with the named library.

    "torch": torch.matmul (fp32 goes to MKL, bf16 to oneDNN in the CPU build). "onednn": a
    torch.nn.Linear converted with torch.utils.mkldnn (oneDNN for fp32 too), the library vLLM's
    CPU backend uses for its linear layers. MKL's fp32 GEMM does not use AVX-512 on AMD CPUs.
    """
    if library == "torch":
        out = torch.empty(a.shape[0], b.shape[1], dtype=a.dtype)
        return lambda: torch.matmul(a, b, out=out)
    from torch.utils import mkldnn

    linear = torch.nn.Linear(b.shape[0], b.shape[1], bias=False, dtype=a.dtype).eval()
    with torch.no_grad():
        linear.weight.copy_(b.t())
    linear = mkldnn.to_mkldnn(linear, a.dtype)
    x = a.to_mkldnn()

    def run() -> None:
        with torch.no_grad():
            linear(x)

    return run


def matmul_rate(
    n_rows: int, n_inner: int, n_cols: int, dtype: torch.dtype, library: str, repeats: int
) -> tuple[float, float]:
    """(best, median) GFLOP/s of A(n_rows×n_inner) @ B(n_inner×n_cols)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n_rows, n_inner, generator=gen).to(dtype)
    b = torch.randn(n_inner, n_cols, generator=gen).to(dtype)
    gemm = _gemm_callable(a, b, library)
    flop = 2.0 * n_rows * n_inner * n_cols
    # Small GEMMs finish in microseconds: time a loop of them so the clock resolves them.
    inner = max(1, int(2e9 // flop))

    def run() -> None:
        for _ in range(inner):
            gemm()

    times = timed(run, repeats)
    return flop * inner / min(times) / 1e9, flop * inner / statistics.median(times) / 1e9


def vllm_matmul_rate(dtype: str, repeats: int = 3, size: int = 4096) -> float:
    """Best GFLOP/s of a square matmul through the library vLLM's CPU linear layers use
    (oneDNN for fp32 and bf16): the compute ceiling of a vLLM decode."""
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    return matmul_rate(size, size, size, torch_dtype, "onednn", repeats)[0]


def decode_flop_per_token(model_dir) -> float:
    """FLOP of one generated token: 2 per parameter, a tied embedding counted once (as the LM
    head; the lookup is free). Attention over the context (≈ 4% at 150 tokens) is left out."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir, local_files_only=True)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return 2.0 * sum(p.numel() for p in model.parameters())  # parameters() yields tied ones once


def bandwidth(mib: int, repeats: int) -> list[tuple[str, float, float]]:
    """Rows (name, best GB/s, median GB/s). 1 GB = 1e9 bytes."""
    n = mib * (1 << 20) // 4
    src_t = torch.rand(n, dtype=torch.float32)
    dst_t = torch.empty_like(src_t)
    src_n = src_t.numpy()
    dst_n = dst_t.numpy()
    size = n * 4
    rows = []
    for name, fn, bytes_moved in (
        ("read, torch.sum, all threads", lambda: src_t.sum(), size),
        ("copy, torch copy_, all threads (read + write)", lambda: dst_t.copy_(src_t), 2 * size),
        ("read, numpy sum, 1 thread", lambda: src_n.sum(), size),
        ("copy, numpy copyto, 1 thread (read + write)", lambda: np.copyto(dst_n, src_n), 2 * size),
    ):
        times = timed(fn, repeats)
        rows.append(
            (name, bytes_moved / min(times) / 1e9, bytes_moved / statistics.median(times) / 1e9)
        )
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    flags = cpu_flags()
    isa = ", ".join(
        f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16") if f in flags
    )
    print(
        f"machine: {cpu_description()}, {os.cpu_count()} logical CPUs "
        f"({len(os.sched_getaffinity(0))} usable), ISA: {isa}; python "
        f"{platform.python_version()}, torch {torch.__version__} ({args.threads} threads), "
        f"numpy {np.__version__}"
    )
    load_start = load()
    n = args.size
    rows: list[tuple[str, str, float, float]] = []
    shapes = {"square": (n, n, n), "decode": (64, 576, 1536)}
    for shape, dtype, library in (
        ("square", torch.float32, "torch"),
        ("square", torch.float32, "onednn"),
        ("square", torch.bfloat16, "torch"),
        ("decode", torch.float32, "torch"),
        ("decode", torch.float32, "onednn"),
        ("decode", torch.bfloat16, "torch"),
    ):
        m, k, c = shapes[shape]
        best, med = matmul_rate(m, k, c, dtype, library, args.repeats)
        label = "fp32" if dtype == torch.float32 else "bf16"
        lib = {"torch": "torch.matmul", "onednn": "oneDNN linear"}[library]
        what = f"{m}×{k}·{k}×{c}" + (" (decode step, batch 64)" if shape == "decode" else "")
        rows.append((f"matmul {label}, {lib}, {what}", "GFLOP/s", best, med))
    load_mid = load()
    for name, best, med in bandwidth(args.mib, args.repeats):
        rows.append((f"memory {name}, {args.mib} MiB", "GB/s", best, med))
    load_end = load()

    print(
        f"load average (1/5/15 min): start {load_start}, after matmuls {load_mid}, end {load_end}"
    )
    print(f"best and median of {args.repeats} after one warm-up\n")
    print("| measurement | unit | best | median |")
    print("|---|---|---:|---:|")
    for name, unit, best, med in rows:
        print(f"| {name} | {unit} | {best:,.1f} | {med:,.1f} |")


if __name__ == "__main__":
    main()
