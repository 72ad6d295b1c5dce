"""Sketch jobs on Ray: shard sums as Ray tasks equal the in-process sums; ``gramfed run`` works."""

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import ray

from gramfed.platform.runtime.driver import run_job
from gramfed.platform.runtime.sketch import ray_sums
from gramfed.platform.sketch_build import local_sums
from gramfed.platform.sketch_files import load_sketches
from gramfed.privacy.ledger import Ledger
from gramfed.workers.sketch.spec import SketchSpec


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.mark.parametrize("kernel", ["gaussian", "angular"])
def test_ray_task_sums_equal_local_sums(kernel: str, rng: np.random.Generator) -> None:
    x = rng.standard_normal((3000, 4))
    labels = rng.integers(0, 3, 3000).astype(float)
    if kernel == "gaussian":
        spec = SketchSpec("gaussian", 4, seed=5, bandwidth=1.0, features=128)
    else:
        spec = SketchSpec("angular", 4, seed=5, repetitions=16, hashes=4)
    shards = np.array_split(np.arange(3000), 4)
    names = ["0", "1", "2"]
    here = local_sums(spec, x, labels, names, shards, "cpu")
    there = ray_sums(spec, x, labels, names, shards, "cpu")
    for name in names:
        np.testing.assert_array_equal(there[name].values, here[name].values)
        assert there[name].count == here[name].count


def test_gramfed_run_builds_a_sketch_job_on_ray(
    tmp_path: Path, key_path: Path, rng: np.random.Generator
) -> None:
    np.save(tmp_path / "x.npy", rng.standard_normal((2000, 3)))
    job = tmp_path / "sketch.toml"
    job.write_text(
        '[job]\nkind = "sketch_build"\nname = "s"\n[data]\npath = "x.npy"\n'
        '[sketch]\nkernel = "gaussian"\nbandwidth = 1.0\nfeatures = 256\nseed = 1\n'
        f'[privacy]\nledger = "s.db"\nkey = "{key_path}"\ndataset = "s"\nbudget_epsilon = 2.0\n'
        'epsilon = 1.0\n[compute]\ndevice = "cpu"\nshards = 4\n[output]\npath = "s.gfs"\n'
    )
    summary = run_job(job)
    assert summary["shards"] == 4
    (sketch,) = load_sketches(tmp_path / "s.gfs")
    assert abs(sketch.count - 2000) < 100
    with Ledger(tmp_path / "s.db") as ledger:
        assert len(ledger.entries(kinds=("release",))) == 1
    with pytest.raises(ValueError, match="no checkpoint"):
        run_job(job, resume=True)


def test_submit_validates_a_sketch_job_and_stages_its_data_file(
    tmp_path: Path, key_path: Path
) -> None:
    from typer.testing import CliRunner

    from gramfed.platform.cli.main import app

    folder = tmp_path / "job"
    folder.mkdir()
    np.save(tmp_path / "outside.npy", np.zeros((10, 2)))
    job = folder / "sketch.toml"
    job.write_text(
        '[job]\nkind = "sketch_build"\n[data]\npath = "../outside.npy"\n'
        '[sketch]\nkernel = "gaussian"\nbandwidth = 1.0\nfeatures = 64\n'
        f'[privacy]\nledger = "s.db"\nkey = "{key_path}"\ndataset = "s"\nepsilon = 1.0\n'
        '[output]\npath = "s.gfs"\n'
    )
    args = ["submit", str(job), "--address", "http://127.0.0.1:9"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "data.path" in result.output and "outside the job's folder" in result.output
    job.write_text(job.read_text().replace("[sketch]", "[sketch]\nfeatures_typo = 1"))
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "features_typo" in result.output, result.output
