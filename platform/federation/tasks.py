"""Federated job kinds: what a participant computes and releases, and what the sum means.

A participant's contribution is one integer vector: it adds its share of distributed discrete
Gaussian noise through its own gate and masks it; the coordinator unmasks only the sum over the
survivors, whose noise has variance at least ``threshold * sigma2_each`` per coordinate. Every
rule here is a function of the public ``JobDescription`` alone, so a participant derives the
mechanism (and so the price it pays) itself instead of trusting the coordinator's arithmetic.

Kinds, privacy unit one record, neighbours by adding or removing one record of one participant:

* ``sketch``: ``[sums, n]`` of a kernel density sketch, or one block per class for a
  classification sketch (``classes``). L2 sensitivity of one block: sqrt(R + 1) for LSH
  counts (R bucket counts and n change by one), sqrt(2 + 2^-11) for random Fourier features
  (``gramfed.platform.sketch_release``); a record is in one class, so that is the whole vector's.
* ``dp_gsmp``: the packed sufficient statistics ``[w_S vech(S), w_b b, w_c c, w_n n]`` of the
  random-feature GP, L2 sensitivity 1 (``gramfed.workers.dp_gsmp.statistics``).

Integer vectors (LSH counts) are summed as they are. Real vectors are rounded to the grid
``2**exponent`` (``gramfed.privacy.fixedpoint``): rounding moves neighbouring vectors at most
``Delta / 2**exponent + ceil(sqrt(m))`` grid units apart in L2 for m coordinates, and that
inflated sensitivity is what the mechanism is calibrated to. The grid is chosen so the rounding
term is at most 1/64 of the first. Rounding touches the data, never the noise, which stays an
exact integer draw.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from google.protobuf.message import DecodeError

from gramfed.platform.federation.gsmp import statistics_plan
from gramfed.platform.federation.secagg import DistributedDiscreteGaussian, ring_bits
from gramfed.platform.sketch_files import spec_from_proto
from gramfed.platform.sketchspec import class_names
from gramfed.privacy import fixedpoint
from gramfed.protos import federation_pb2 as pb
from gramfed.protos import sketch_pb2
from gramfed.workers.dp_gsmp.estimator import StatisticsRecipe
from gramfed.workers.dp_gsmp.statistics import StatisticsSplit, pack, vector_size
from gramfed.workers.sketch import rff
from gramfed.workers.sketch.accumulate import accumulate
from gramfed.workers.sketch.classify import accumulate_by_label
from gramfed.workers.sketch.spec import SketchSpec

KINDS = ("sketch", "dp_gsmp")
NOISE_TAIL_SDS = 40  # a discrete Gaussian draw beyond 40 sd has probability below 1e-340
ROUNDING_SHARE = 64  # grid: the rounding term is at most 1/64 of the scaled sensitivity


class TaskError(ValueError):
    """A job this participant cannot compute, or a description no rule accepts."""


@dataclass(frozen=True)
class VectorRules:
    """What a job description fixes about one participant's vector, derived once per job."""

    dim: int
    integer: bool
    exponent: int  # the fixed-point grid 2**exponent of a real vector (0 for integer counts)
    mechanism: DistributedDiscreteGaussian
    sketch: SketchSpec | None = None
    recipe: StatisticsRecipe | None = None
    split: StatisticsSplit | None = None


def rules(job: pb.JobDescription) -> VectorRules:
    """The job's rules (cached: coordinator and participant ask for them at every stage)."""
    return _rules(job.SerializeToString(deterministic=True))


@functools.lru_cache(maxsize=32)
def _rules(description: bytes) -> VectorRules:
    job = pb.JobDescription.FromString(description)
    if job.threshold < 1:
        raise TaskError("a job needs a threshold of at least one noise share")
    parts: dict[str, Any] = {}
    if job.kind == "sketch":
        spec = parts["sketch"] = _sketch_spec(job)
        m = max(1, len(job.classes)) * (spec.size + 1)
        integer = not spec.is_rff
        sensitivity = rff.L2_SENSITIVITY if spec.is_rff else math.sqrt(spec.repetitions + 1)
    elif job.kind == "dp_gsmp":
        try:
            parts["recipe"], parts["split"] = statistics_plan(job.gsmp)
        except ValueError as exc:
            raise TaskError(f"the job's model is invalid: {exc}") from None
        m = vector_size(parts["recipe"].features.dim)
        integer, sensitivity = False, 1.0
    else:
        raise TaskError(f"unknown job kind {job.kind!r}; known kinds: {', '.join(KINDS)}")
    e = 0 if integer else math.floor(math.log2(sensitivity / (ROUNDING_SHARE * math.sqrt(m))))
    units = sensitivity if integer else fixedpoint.l2_units(sensitivity, e, m)
    mechanism = DistributedDiscreteGaussian.for_rho(
        Fraction(job.rho), parties=job.threshold, l2_sensitivity=units, dim=m
    )
    return VectorRules(m, integer, e, mechanism, **parts)


def _sketch_spec(job: pb.JobDescription) -> SketchSpec:
    try:
        return spec_from_proto(sketch_pb2.SketchSpec.FromString(job.sketch_spec))
    except (DecodeError, ValueError, TypeError) as exc:
        raise TaskError(f"the job's sketch spec is invalid: {exc}") from None


def value_bound(job: pb.JobDescription) -> int:
    """Bound on |coordinate| of a noised vector: every record adds at most 1 per coordinate
    (counts; unit-norm features; statistics with weights <= 1), plus the noise's far tail."""
    r = rules(job)
    tail = NOISE_TAIL_SDS * math.sqrt(r.mechanism.sigma2_each)
    return math.ceil(job.max_records / 2.0**r.exponent + 1 + tail)


def bits(job: pb.JobDescription, parties: int) -> int:
    return ring_bits(parties, job.value_bound)


def local_vector(job: pb.JobDescription, x: np.ndarray, y: np.ndarray | None) -> np.ndarray:
    """One participant's exact vector, on the grid (never sent without the gate)."""
    if len(x) > job.max_records:
        raise TaskError(f"{len(x)} records exceed the job's public bound of {job.max_records}")
    r = rules(job)
    values = _real_vector(job, r, x, y)
    if r.integer:
        return values.astype(np.int64)
    return fixedpoint.encode(values, r.exponent)


def decode(job: pb.JobDescription, total: np.ndarray) -> np.ndarray:
    """The unmasked integer sum in the statistics' own units."""
    r = rules(job)
    if r.integer:
        return np.asarray(total, dtype=np.int64)
    return fixedpoint.decode(total, r.exponent)


def _real_vector(
    job: pb.JobDescription, r: VectorRules, x: np.ndarray, y: np.ndarray | None
) -> np.ndarray:
    if r.sketch is not None:
        spec = r.sketch
        if x.ndim != 2 or x.shape[1] != spec.input_dim:
            raise TaskError(f"the sketch takes {spec.input_dim} columns, the data have {x.shape}")
        if not job.classes:
            sums = accumulate(spec, x, device="cpu")
            return np.append(sums.values, sums.count)
        if y is None:
            raise TaskError("a class sketch needs labels (participant join --target COLUMN)")
        labels = class_names(y)
        if unknown := sorted(set(labels) - set(job.classes)):
            raise TaskError(f"labels outside the job's classes: {', '.join(unknown[:5])}")
        by_class = accumulate_by_label(spec, x, labels, list(job.classes), device="cpu")
        return np.concatenate(
            [np.append(by_class[c].values, by_class[c].count) for c in job.classes]
        )
    assert r.recipe is not None and r.split is not None
    if y is None:
        raise TaskError("a private GSMP fit needs targets (participant join --target COLUMN)")
    features = r.recipe.features
    if x.ndim != 2 or x.shape[1] != features.input_dim:
        raise TaskError(f"the model takes {features.input_dim} columns, the data have {x.shape}")
    stats = r.recipe.statistics(torch.from_numpy(x), torch.from_numpy(y))
    return pack(stats, r.split)
