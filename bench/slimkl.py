"""SLIM-KL reproduction benchmark: every shipped dataset, exact and 8-bit, beside the authors.

    .venv/bin/python bench/slimkl.py [--device cpu] [--dataset NAME ...] [--runtime ray]
        [--out FILE.jsonl]

Writes one JSON line per run (the same objects as ``gramfed bench slimkl --json``) and
prints the Markdown table that goes into bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import ray

from gramfed.platform.benchmarks import bench_slimkl
from gramfed.platform.cli.progress import admm_progress
from gramfed.platform.datasets import SLIMKL_DATASETS


def markdown_table(rows: list[dict]) -> str:
    by_key = {(r["dataset"], r["bits"]): r for r in rows}
    lines = [
        "| dataset | reference MSE | ours MSE (J=2) | ratio | 8-bit MSE | 8-bit / exact | "
        "reference s | ours s | speed-up | bits sent 8-bit | fewer than float64 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in SLIMKL_DATASETS:
        exact, quant = by_key.get((name, None)), by_key.get((name, 8))
        if exact is None:
            continue
        ref, ref_s = exact["reference_test_mse"], exact["reference_time_s"]
        cells = [
            name,
            f"{ref:.4g}" if ref else "none",
            f"{exact['test_mse']:.4g}",
            f"{exact['test_mse'] / ref:.2f}" if ref else "-",
            f"{quant['test_mse']:.4g}" if quant else "-",
            f"{quant['test_mse'] / exact['test_mse']:.3f}" if quant else "-",
            f"{ref_s:.0f}" if ref_s else "-",
            f"{exact['fit_seconds']:.1f}",
            f"{ref_s / exact['fit_seconds']:.0f}x" if ref_s else "-",
            str(quant["bits_sent"]) if quant else "-",
            f"{quant['bits_float64_equivalent'] / quant['bits_sent']:.1f}x" if quant else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", action="append", choices=SLIMKL_DATASETS)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--agents", type=int, default=2)
    parser.add_argument(
        "--runtime",
        choices=("local", "ray"),
        default="local",
        help="ray: each agent on an actor of a local Ray over every core, in parallel",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/out/slimkl.jsonl"))
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.runtime == "ray":
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="warning")
    rows = []
    with args.out.open("w") as sink:
        for name in args.dataset or SLIMKL_DATASETS:
            for bits in (None, 8):
                label = f"{name} {'exact' if bits is None else f'{bits}-bit'}"
                with admm_progress(label, 100) as hook:
                    row = bench_slimkl(
                        name,
                        agents=args.agents,
                        bits=bits,
                        device=args.device,
                        runtime=args.runtime,
                        on_round=hook,
                    )
                rows.append(row)
                sink.write(json.dumps(row) + "\n")
                sink.flush()
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
