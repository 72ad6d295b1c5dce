"""Gram-block throughput: kernel entries per second, tiled code against plain dense torch.

    .venv/bin/python bench/gram_throughput.py [--n 4096] [--d 8] [--A 64] [--device cpu cuda]
        [--repeats 3] [--tile-rows 1024] [--tile-cols 1024] [--out bench/out/gram.jsonl]

Every case computes one product with a vector, so each kernel entry is formed and reduced:

- ``rbf/tiled``: ``TiledKernel.matmul`` (the pooled GP's product), RBF-ARD tiles.
- ``rbf/dense``: ``exp(-cdist(x/l, x/l)^2 / 2) @ v`` on the whole n x n matrix.
- ``gsmp/tiled``: ``SubKernelGram.matvec`` streamed (the ADMM worker's reduction): all A
  sub-kernels times u, tile by tile; an entry is one sub-kernel value, A n^2 in all.
- ``gsmp/dense``: the GSMP formula one sub-kernel at a time on the full (n, n, P) differences,
  ``prod_p exp(-2 pi^2 tau_p^2 v^2) cos(2 pi mu_p tau_p) @ u``.
- ``gsmp/product`` (d <= 4): ``SubKernelGram.matvec`` in product form (the ADMM worker's
  strategy there): matrix products with the 2^d cos/sin features and the shared envelope.

The best of ``--repeats`` timed runs (after one warm-up) is reported. One JSON object per case
on stdout (and appended to ``--out``), a table on stderr. CUDA is used when asked for and
present (by default: CPU, plus CUDA when available).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gramfed.workers.gram import GramOptions, SubKernelGram
from gramfed.workers.kernels.gsmp import PRODUCT_FORM_MAX_DIMS, GSMPGrid, GSMPKernel
from gramfed.workers.kernels.rbf import RBFARDKernel
from gramfed.workers.pooled import PooledOptions, TiledKernel

console = Console(stderr=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(run: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    run()
    synchronize(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def cases(args: argparse.Namespace, device: torch.device) -> dict[str, tuple[Callable, int]]:
    """name -> (one product, kernel entries it forms)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.n, args.d, generator=gen, dtype=torch.float64).to(device)
    v = torch.randn(args.n, 1, generator=gen, dtype=torch.float64).to(device)
    lengthscales = torch.full((args.d,), 1.0, dtype=torch.float64)
    rbf = RBFARDKernel(lengthscales)
    tiles = TiledKernel(
        rbf, PooledOptions(tile_rows=args.tile_rows, tile_cols=args.tile_cols), device
    )
    grid = GSMPGrid.default(args.d, per_dim=max(1, args.A // args.d), scale=0.05)
    grid_d = grid.to(device)
    stream = SubKernelGram(
        GSMPKernel(grid), x, GramOptions(device=str(device), strategy="streamed")
    )
    scaled = x / lengthscales.to(device)

    def rbf_dense() -> torch.Tensor:
        return torch.exp(-0.5 * torch.cdist(scaled, scaled).square()) @ v

    def gsmp_dense() -> torch.Tensor:
        tau = x[:, None, :] - x[None, :, :]
        out = torch.empty(grid.num_components, args.n, dtype=torch.float64, device=device)
        for i in range(grid.num_components):
            mu, s = grid_d.means[i], grid_d.scales[i]
            k = torch.exp(-2 * math.pi**2 * tau.square() * s.square()) * torch.cos(
                2 * math.pi * mu * tau
            )
            out[i] = k.prod(-1) @ v[:, 0]
        return out

    square = args.n * args.n
    found = {
        "rbf/tiled": (lambda: tiles.matmul(x, x, v), square),
        "rbf/dense": (rbf_dense, square),
        "gsmp/tiled": (lambda: stream.matvec(v[:, 0]), grid.num_components * square),
        "gsmp/dense": (gsmp_dense, grid.num_components * square),
    }
    if args.d <= PRODUCT_FORM_MAX_DIMS:
        product = SubKernelGram(
            GSMPKernel(grid), x, GramOptions(device=str(device), strategy="spectral")
        )
        found["gsmp/product"] = (lambda: product.matvec(v[:, 0]), grid.num_components * square)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--d", type=int, default=8)
    parser.add_argument("--A", type=int, default=64, help="GSMP sub-kernels (rounded to d Q)")
    parser.add_argument("--device", nargs="+", default=None, help="cpu, cuda (default: both)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tile-rows", type=int, default=1024)
    parser.add_argument("--tile-cols", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    names = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in names and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda asked for, but CUDA is not available here")
    rows = []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        per_device = 4 + int(args.d <= PRODUCT_FORM_MAX_DIMS)
        task = progress.add_task("throughput", total=per_device * len(names))
        for name in names:
            device = torch.device(name)
            for case, (run, entries) in cases(args, device).items():
                progress.update(task, description=f"{case} on {name}")
                seconds = best_seconds(run, device, args.repeats)
                kernel, impl = case.split("/")
                row = {
                    "kernel": kernel,
                    "impl": impl,
                    "device": torch.cuda.get_device_name(device) if name == "cuda" else "cpu",
                    "n": args.n,
                    "d": args.d,
                    "A": args.A if kernel == "gsmp" else None,
                    "tile": [args.tile_rows, args.tile_cols] if impl == "tiled" else None,
                    "entries": entries,
                    "seconds": seconds,
                    "entries_per_second": entries / seconds,
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out is not None:
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    with args.out.open("a") as fh:
                        fh.write(json.dumps(row) + "\n")
                progress.advance(task)
    table = Table(title=f"Gram-block throughput, n = {args.n}, d = {args.d}")
    for col in ("kernel", "impl", "device", "entries", "seconds", "entries/s", "tiled/dense"):
        table.add_column(col, justify="left" if col in ("kernel", "impl", "device") else "right")
    dense = {
        (r["kernel"], r["device"]): r["entries_per_second"] for r in rows if r["impl"] == "dense"
    }
    for r in rows:
        ratio = r["entries_per_second"] / dense[(r["kernel"], r["device"])]
        table.add_row(
            r["kernel"],
            r["impl"],
            r["device"],
            f"{r['entries']:.3g}",
            f"{r['seconds']:.3g}",
            f"{r['entries_per_second']:.3g}",
            f"{ratio:.2f}x",
        )
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
