"""``gramfed sketch``: build, merge, query, classify with and monitor against DP KDE sketches."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from gramfed.platform.cli.errors import user_errors
from gramfed.platform.cli.progress import stderr
from gramfed.platform.sketch_build import run_sketch_job
from gramfed.platform.sketch_files import load_sketch, load_sketches, save_sketches
from gramfed.platform.sketchspec import class_names, load_points, load_sketch_job
from gramfed.workers.sketch.classify import SketchClassifier
from gramfed.workers.sketch.discriminant import (
    DEFAULT_EM_STEPS,
    DEFAULT_RANK,
    SketchDiscriminant,
)
from gramfed.workers.sketch.mmd import DEFAULT_LEVEL, monitor
from gramfed.workers.sketch.query import DEFAULT_CONFIDENCE, SketchQuery
from gramfed.workers.sketch.sketch import merge_all

ALARM = 1


class ClassRule(StrEnum):
    """How ``gramfed sketch classify`` turns class sketches into a prediction."""

    density = "density"
    gaussian = "gaussian"


sketch_app = typer.Typer(
    help="Differentially private kernel density sketches: build, merge, query, classify, monitor.",
    no_args_is_help=True,
)

Device = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


@sketch_app.command()
def build(
    job_path: Annotated[Path, typer.Argument(metavar="JOB", help="Sketch job (TOML).")],
    ray: Annotated[
        bool, typer.Option("--ray", help="Sketch the shards as Ray tasks (local Ray by default).")
    ] = False,
    address: Annotated[
        str | None, typer.Option(help="Ray cluster (HOST:PORT, ray://HOST:PORT or auto).")
    ] = None,
    as_json: AsJson = False,
) -> None:
    """Sketch a dataset (sharded; one sketch, or one per class) and release it through the gate."""
    with user_errors():
        job = load_sketch_job(job_path)
        summary = run_sketch_job(job, distributed=ray or address is not None, address=address)
    _report(summary, as_json)


@sketch_app.command()
def merge(
    inputs: Annotated[list[Path], typer.Argument(metavar="SKETCH...", help="Sketch files.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Merged sketch file.")],
    as_json: AsJson = False,
) -> None:
    """Merge sketches of disjoint data (shards or parties) into the sketch of their union."""
    with user_errors():
        if len(inputs) < 2:
            raise ValueError("give at least two sketch files to merge")
        sets = [load_sketches(p) for p in inputs]
        labels = [s.label for s in sets[0]]
        for path, group in zip(inputs[1:], sets[1:], strict=True):
            if [s.label for s in group] != labels:
                raise ValueError(f"{path}: holds other classes than {inputs[0]}")
        merged = [merge_all([group[i] for group in sets]) for i in range(len(labels))]
        save_sketches(merged, out)
    _report(
        {
            "output": str(out),
            "spec": merged[0].spec.describe(),
            "noisy_count": sum(s.count for s in merged),
            "privacy": merged[0].privacy_statement(),
        },
        as_json,
    )


@sketch_app.command()
def query(
    sketch_path: Annotated[Path, typer.Argument(metavar="SKETCH", help="Sketch file.")],
    points: Annotated[Path, typer.Option(help="Query points (.csv, .npy, .npz).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="CSV of estimates (default: stdout).")
    ] = None,
    confidence: Annotated[
        float, typer.Option(help="Confidence of the stated error bound.")
    ] = DEFAULT_CONFIDENCE,
    device: Device = "auto",
) -> None:
    """KDE estimates at the query points, each with its error bound (post-processing: free)."""
    with user_errors():
        sketch = load_sketch(sketch_path)
        y = load_points(points).x
        engine = SketchQuery(sketch, device)
        estimate, bound = (t.numpy() for t in engine.density_with_bound(y, confidence))
    table = np.column_stack([estimate, bound])
    header = f"density,error_bound_{confidence:g}"
    if out is None:
        typer.echo(header)
        for row in table:
            typer.echo(f"{row[0]:.6g},{row[1]:.6g}")
    else:
        np.savetxt(out, table, delimiter=",", header=header, comments="", fmt="%.8g")
        stderr.print(f"{len(table)} estimates written to {out}")


@sketch_app.command()
def classify(
    sketch_path: Annotated[
        Path, typer.Argument(metavar="SKETCHES", help="File with one sketch per class.")
    ],
    points: Annotated[Path, typer.Option(help="Points to classify (.csv, .npy, .npz).")],
    label: Annotated[
        str | None,
        typer.Option(help="Column (CSV) or key (.npz) of true classes, to report accuracy."),
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="CSV of predictions.")] = None,
    prior: Annotated[bool, typer.Option(help="Weight densities by class proportions.")] = False,
    public: Annotated[
        Path | None,
        typer.Option(
            help="Public points (never the private ones; .csv, .npy, .npz): the class sums are"
            " projected on the span of their features, which removes noise (post-processing)."
        ),
    ] = None,
    rank: Annotated[
        int | None,
        typer.Option(
            help="With --public: keep only this many leading directions of their span"
            f" (--rule gaussian: default {DEFAULT_RANK})."
        ),
    ] = None,
    rule: Annotated[
        ClassRule,
        typer.Option(
            help="density: the class of highest kernel density estimate; gaussian: Gaussian"
            " class densities with a shared covariance in the public span (gaussian sketches,"
            " needs --public; always weighs by class proportions)."
        ),
    ] = ClassRule.density,
    floor: Annotated[
        float,
        typer.Option(
            help="--rule gaussian: lowest within-class variance, as a multiple of the mean"
            " public variance."
        ),
    ] = 1.0,
    em_steps: Annotated[
        int,
        typer.Option(
            help="--rule gaussian: EM steps refining the class means on the (unlabelled) public"
            " rows; 0 keeps the released means."
        ),
    ] = DEFAULT_EM_STEPS,
    device: Device = "auto",
    as_json: AsJson = False,
) -> None:
    """Predict, for each point, the class whose sketch has the highest estimated density."""
    with user_errors():
        sketches = load_sketches(sketch_path)
        if len(sketches) < 2:
            raise ValueError(f"{sketch_path}: holds one sketch; classification needs one per class")
        data = load_points(points, label=label, y_key=label or "y")
        rows = None if public is None else load_points(public).x
        by_label = {s.label: s for s in sketches}
        model: SketchClassifier | SketchDiscriminant
        if rule is ClassRule.gaussian:
            if rows is None:
                raise ValueError("--rule gaussian needs --public rows")
            model = SketchDiscriminant(
                by_label,
                public=rows,
                rank=DEFAULT_RANK if rank is None else rank,
                floor=floor,
                em_steps=em_steps,
                device=device,
            )
        else:
            model = SketchClassifier(by_label, prior=prior, public=rows, rank=rank, device=device)
        predicted = model.predict(data.x)
    summary: dict[str, Any] = {"points": len(predicted), "classes": model.labels}
    if data.labels is not None:
        summary["accuracy"] = float(np.mean(predicted == class_names(data.labels)))
    summary["privacy"] = sketches[0].privacy_statement()
    if out is not None:
        out.write_text("predicted\n" + "".join(f"{p}\n" for p in predicted), encoding="utf-8")
        summary["output"] = str(out)
    _report(summary, as_json)


@sketch_app.command("monitor")
def monitor_command(
    sketch_path: Annotated[Path, typer.Argument(metavar="REFERENCE", help="Reference sketch.")],
    batch: Annotated[Path, typer.Option(help="New batch (.csv, .npy, .npz).")],
    level: Annotated[float, typer.Option(help="False-alarm rate.")] = DEFAULT_LEVEL,
    seed: Annotated[int, typer.Option(help="Seed of the null-distribution simulation.")] = 0,
    device: Device = "auto",
    as_json: AsJson = False,
) -> None:
    """Two-sample check of a batch against a private reference; exit 1 on an alarm."""
    with user_errors():
        reference = load_sketch(sketch_path)
        result = monitor(reference, load_points(batch).x, level=level, seed=seed, device=device)
    _report({**result.to_json(), "privacy": reference.privacy_statement()}, as_json)
    if result.alarm:
        raise typer.Exit(ALARM)


def _report(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(summary))
        return
    for key, value in summary.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        stderr.print(f"[bold]{key}[/]: {shown}", soft_wrap=True)
