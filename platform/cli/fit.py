"""``gramfed fit``: run a job with every agent in this process (no Ray), results through the
gate into the job's output folder, exactly as ``gramfed run`` writes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gramfed.platform.cli.progress import admm_progress
from gramfed.platform.runtime.driver import run_job


def run_fit(job_path: Path) -> dict[str, Any]:
    return run_job(job_path, distributed=False, progress=admm_progress)
