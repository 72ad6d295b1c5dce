"""Federated jobs from the same job files as cluster jobs, and what their sums become.

A coordinator configuration lists jobs by file::

    [[jobs]]
    spec = "density.toml"   # a sketch job (kind = "sketch_build"), as `gramfed sketch build` takes
    input_dim = 2           # the participants' columns (the coordinator never sees their data)
    threshold = 3           # survivors needed; each of their noise shares is in the sum
    max_records = 1000      # public bound on one participant's records

    [[jobs]]
    spec = "gsmp.toml"      # a private GSMP job (kind = "dp_gsmp"), as `gramfed run` takes
    ...

The spec's model, sketch and privacy sections are used as they are; its ``[data]`` section is
not: each participant brings its own data (``gramfed participant join --data``). The budget
asked of each participant is the spec's: ``[privacy] epsilon`` (with ``delta``) or ``rho``,
converted to zCDP, charged to the participant's pool named by the spec's dataset.
"""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from gramfed.platform.federation import tasks
from gramfed.platform.federation.gsmp import FederatedGSMP, recipe_to_pb
from gramfed.platform.jobspec import JobSpec, load_job
from gramfed.platform.runtime.driver import job_kind
from gramfed.platform.sketch_files import save_sketches, spec_to_proto
from gramfed.platform.sketchspec import SketchJob, load_sketch_job
from gramfed.privacy.accountant import rho_for_epsilon
from gramfed.protos import federation_pb2 as pb
from gramfed.workers.sketch.sketch import NoiseProfile, Provenance, Sketch


class FederatedJob(BaseModel):
    """A ``[[jobs]]`` entry of a coordinator configuration."""

    model_config = ConfigDict(extra="forbid")

    spec: Path = Field(description="a sketch_build or dp_gsmp job file")
    input_dim: PositiveInt
    threshold: PositiveInt = Field(description="survivors needed; minimum noise shares")
    max_records: PositiveInt = Field(description="public bound on one participant's records")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]+$", description="default: [job] name")

    def load(self) -> LoadedJob:
        """Read and check the spec file; one-line errors name it."""
        if not self.spec.exists():
            raise ValueError(f"{self.spec}: no such job file")
        kind = job_kind(self.spec)
        if kind == "sketch_build":
            return LoadedJob(self, load_sketch_job(self.spec))
        spec = load_job(self.spec)
        if spec.job.kind != "dp_gsmp":
            raise ValueError(
                f"{self.spec}: federated jobs are sketch_build or dp_gsmp, not {spec.job.kind!r}"
            )
        return LoadedJob(self, spec)


class LoadedJob:
    """A federated job ready to offer: its public description and how to finish it."""

    def __init__(self, entry: FederatedJob, spec: SketchJob | JobSpec) -> None:
        self.entry = entry
        self.spec = spec
        self.name = entry.name or spec.job.name
        self.kind = "sketch" if isinstance(spec, SketchJob) else "dp_gsmp"
        self.description = self._describe()

    def _describe(self) -> pb.JobDescription:
        entry, spec = self.entry, self.spec
        job = pb.JobDescription(
            kind=self.kind,
            dp=True,
            threshold=entry.threshold,
            max_records=entry.max_records,
        )
        if isinstance(spec, SketchJob):
            if spec.sketch.noise != "gaussian":
                raise ValueError(
                    f"{entry.spec}: federated sketches add distributed discrete Gaussian noise;"
                    " laplace noise cannot be shared out"
                )
            privacy = spec.privacy
            delta = privacy.delta or privacy.budget_delta  # the delta of the pool it would create
            rho = privacy.rho or rho_for_epsilon(privacy.epsilon, delta)
            job.dataset = privacy.dataset
            job.sketch_spec = spec_to_proto(spec.sketch_spec(entry.input_dim)).SerializeToString()
            job.classes.extend(spec.sketch.classes or [])
        else:
            assert spec.privacy.epsilon is not None and spec.privacy.delta is not None
            rho = rho_for_epsilon(spec.privacy.epsilon, spec.privacy.delta)
            job.dataset = spec.pool_dataset()
            job.gsmp.CopyFrom(recipe_to_pb(spec, entry.input_dim))
        job.rho = str(Fraction(rho))  # exact: never more than the spec asks
        job.value_bound = tasks.value_bound(job)
        return job

    def finish(
        self,
        total: np.ndarray,
        survivors: list[str],
        entries: dict[str, pb.MaskedVector],
        state_dir: Path,
    ) -> dict[str, Any]:
        """Turn the unmasked sum into the job's result; returns what goes in the result file."""
        job = self.description
        rules = tasks.rules(job)
        noise_sd = math.sqrt(len(survivors) * rules.mechanism.sigma2_each) * 2.0**rules.exponent
        values = tasks.decode(job, total)
        result: dict[str, Any] = {"noise_sd": noise_sd}
        if isinstance(self.spec, SketchJob):
            sketches = self._sketches(values, noise_sd, survivors, entries)
            path = save_sketches(sketches, state_dir / f"{self.name}.gfs")
            result.update(sketch_file=str(path), noisy_count=sum(s.count for s in sketches))
        else:
            model = FederatedGSMP.learn(job.gsmp, self.spec, values, noise_sd)
            result.update(model=model.to_json())
        return result

    def _sketches(
        self,
        values: np.ndarray,
        noise_sd: float,
        survivors: list[str],
        entries: dict[str, pb.MaskedVector],
    ) -> list[Sketch]:
        job = self.description
        rules = tasks.rules(job)
        spec, mechanism = rules.sketch, rules.mechanism
        assert spec is not None
        provenance = tuple(
            Provenance(
                ledger_uuid=entries[p].ledger_uuid,
                ledger_id=entries[p].ledger_id,
                entry_hash=entries[p].ledger_entry,
                pool=f"{p}/{job.dataset}",
                rho=Fraction(job.rho),
                delta=0.0,
                unit="record",
                neighbouring="add/remove one record",
                mechanism=mechanism.describe(),
            )
            for p in survivors
        )
        profile = NoiseProfile.gaussian(noise_sd)
        labels = list(job.classes) or [""]
        blocks = values.reshape(len(labels), spec.size + 1)
        dtype = np.float64 if spec.is_rff else np.int64
        return [
            Sketch(spec, block[:-1].astype(dtype), float(block[-1]), profile, provenance, label)
            for label, block in zip(labels, blocks, strict=True)
        ]
