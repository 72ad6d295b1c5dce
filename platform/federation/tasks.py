"""Federated job kinds: what a participant computes and releases, and what the sum means.

``sketch``: a merged differentially private LSH kernel density sketch. Each participant
accumulates the bucket counts of its records and its record count (``[counts..., n]``), adds its
share of distributed discrete Gaussian noise through its own gate, and masks the vector; the
coordinator unmasks only the sum over survivors, which is the merged sketch of their union with
noise of variance at least ``threshold * sigma2_each`` per coordinate. One record changes R
bucket counts and n by one each, so the L2 sensitivity is sqrt(R + 1), as for a central release
(``gramfed.workers.sketch.release``). Only LSH kernels qualify: their counts are integers, which
secure aggregation sums exactly.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from gramfed.platform.federation import wire
from gramfed.platform.federation.secagg import DistributedDiscreteGaussian, ring_bits
from gramfed.protos import federation_pb2 as pb
from gramfed.workers.sketch.accumulate import accumulate
from gramfed.workers.sketch.spec import LSH_KERNELS, SketchSpec

NOISE_TAIL_SDS = 40  # a discrete Gaussian draw beyond 40 sd has probability below 1e-340


class FederatedSketchJob(BaseModel):
    """A ``[[jobs]]`` entry of a coordinator configuration."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["sketch"] = "sketch"
    dataset: str = Field(min_length=1, description="each participant's pool for this data")
    rho: float = Field(gt=0, description="zCDP charge asked of every participant")
    threshold: PositiveInt = Field(description="survivors needed; minimum noise shares")
    max_records: PositiveInt = Field(description="public bound on one participant's records")
    kernel: Literal["laplacian", "l2", "angular"]
    input_dim: PositiveInt
    bandwidth: float | None = Field(None, gt=0)
    repetitions: PositiveInt = 16
    hashes: PositiveInt = 4
    buckets: PositiveInt = 64
    seed: int = Field(0, ge=0, le=2**63 - 1)

    def spec(self) -> SketchSpec:
        return SketchSpec(
            kernel=self.kernel,
            input_dim=self.input_dim,
            seed=self.seed,
            bandwidth=self.bandwidth,
            repetitions=self.repetitions,
            hashes=self.hashes,
            buckets=self.buckets,
        )

    def describe(self) -> pb.JobDescription:
        mechanism = DistributedDiscreteGaussian.for_rho(
            Fraction(self.rho), parties=self.threshold, l2_sensitivity=_l2(self.spec())
        )
        tail = math.ceil(NOISE_TAIL_SDS * math.sqrt(mechanism.sigma2_each))
        return pb.JobDescription(
            kind=self.kind,
            dataset=self.dataset,
            rho=str(Fraction(self.rho).limit_denominator(2**40)),
            dp=True,
            sketch=wire.sketch_to_pb(self.spec()),
            threshold=self.threshold,
            value_bound=self.max_records + tail,
        )


def mechanism(job: pb.JobDescription) -> DistributedDiscreteGaussian:
    """The noise each participant adds, calibrated for the job's charge (public inputs only)."""
    spec = wire.sketch_from_pb(job.sketch)
    if spec.kernel not in LSH_KERNELS:
        raise ValueError(f"federated sketches need an LSH kernel, not {spec.kernel!r}")
    return DistributedDiscreteGaussian.for_rho(
        Fraction(job.rho), parties=job.threshold, l2_sensitivity=_l2(spec), dim=spec.size + 1
    )


def dim(job: pb.JobDescription) -> int:
    return wire.sketch_from_pb(job.sketch).size + 1


def bits(job: pb.JobDescription, parties: int) -> int:
    return ring_bits(parties, job.value_bound)


def local_vector(job: pb.JobDescription, x: np.ndarray) -> np.ndarray:
    """One participant's exact ``[bucket counts..., n]`` (never sent without the gate)."""
    sums = accumulate(wire.sketch_from_pb(job.sketch), x, device="cpu")
    return np.append(sums.values.astype(np.int64), np.int64(sums.count))


def _l2(spec: SketchSpec) -> float:
    return math.sqrt(spec.repetitions + 1)
