"""``gramfed fit``: load a job, fit it in this process, write its results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gramfed.platform.cli.progress import admm_progress
from gramfed.platform.datasets import load_slimkl
from gramfed.platform.jobspec import DataSection, JobSpec, load_job
from gramfed.workers.estimator import GSMPRegressor
from gramfed.workers.posterior import mse, nlpd

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]


def load_job_data(data: DataSection) -> Arrays:
    if data.dataset is not None:
        split = load_slimkl(data.dataset.removeprefix("slimkl:"))
        return split.x_train, split.y_train, split.x_test, split.y_test
    from gramfed.platform.data import load_split

    train, test = load_split(
        data.train,
        data.test,
        target=data.target,
        features=data.features,
        x_key=data.x_key,
        y_key=data.y_key,
    )
    if test is None:
        return train.x, train.y, None, None
    return train.x, train.y, test.x, test.y


def run_fit(job_path: Path, output_dir: Path | None = None) -> dict[str, Any]:
    spec: JobSpec = load_job(job_path)
    x_train, y_train, x_test, y_test = load_job_data(spec.data)
    model = GSMPRegressor(**spec.estimator_params())
    with admm_progress(spec.job.name, spec.admm.max_iter) as on_round:
        model.fit(x_train, y_train, on_round=on_round)
    out = output_dir or spec.output.dir or Path("runs") / spec.job.name
    out.mkdir(parents=True, exist_ok=True)
    active = np.flatnonzero(model.weights_)
    summary: dict[str, Any] = {
        "name": spec.job.name,
        "samples": len(y_train),
        "agents": spec.admm.agents,
        "components": model.grid_.num_components,
        "nonzero_weights": int(active.size),
        "noise_variance": model.noise_variance_,
        "admm_rounds": len(model.admm_result_.rounds),
        "converged": model.admm_result_.converged,
        "fit_seconds": model.fit_seconds_,
        "bits_sent": model.bits_sent_,
        "test_mse": None,
        "nlpd": None,
        "output_dir": str(out),
    }
    if x_test is not None and y_test is not None:
        prediction = model.predict_distribution(x_test)
        target = torch.from_numpy(y_test)
        summary["test_mse"], summary["nlpd"] = mse(prediction, target), nlpd(prediction, target)
        np.savetxt(
            out / "predictions.csv",
            np.column_stack([y_test, prediction.mean.numpy(), prediction.std.numpy()]),
            delimiter=",",
            header="y,mean,std",
            comments="",
        )
    model_record = {
        "grid_means": model.grid_.means[active].tolist(),
        "grid_scales": model.grid_.scales[active].tolist(),
        "component_index": active.tolist(),
        "weights": model.weights_[active].tolist(),
        "noise_variance": model.noise_variance_,
    }
    (out / "model.json").write_text(json.dumps(model_record, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
