"""Federated job kinds: what a participant computes and releases, and what the sum means.

A participant's contribution is one integer vector: it adds its share of distributed discrete
Gaussian noise through its own gate and masks it; the coordinator unmasks only the sum over the
survivors, whose noise has variance at least ``threshold * sigma2_each`` per coordinate. Every
rule here is a function of the public ``JobDescription`` alone, so a participant derives the
mechanism (and so the price it pays) itself instead of trusting the coordinator's arithmetic.

Kinds, privacy unit one record, neighbours by adding or removing one record of one participant:

* ``sketch``: ``[sums, n]`` of a kernel density sketch, or one block per class for a
  classification sketch (``classes``). L2 sensitivity of one block: sqrt(R + 1) for LSH
  counts (R bucket counts and n change by one), sqrt(3) for random Fourier features
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

import math
from fractions import Fraction

import numpy as np
import torch
from google.protobuf.message import DecodeError

from gramfed.platform.federation.gsmp import recipe_from_pb, statistics_split
from gramfed.platform.federation.secagg import DistributedDiscreteGaussian, ring_bits
from gramfed.platform.sketch_files import spec_from_proto
from gramfed.platform.sketchspec import class_names
from gramfed.privacy import fixedpoint
from gramfed.protos import federation_pb2 as pb
from gramfed.protos import sketch_pb2
from gramfed.workers.dp_gsmp.estimator import StatisticsRecipe
from gramfed.workers.dp_gsmp.statistics import SufficientStatistics, pack, vector_size
from gramfed.workers.sketch import rff
from gramfed.workers.sketch.accumulate import accumulate
from gramfed.workers.sketch.classify import accumulate_by_label
from gramfed.workers.sketch.spec import SketchSpec

KINDS = ("sketch", "dp_gsmp")
NOISE_TAIL_SDS = 40  # a discrete Gaussian draw beyond 40 sd has probability below 1e-340
ROUNDING_SHARE = 64  # grid: the rounding term is at most 1/64 of the scaled sensitivity


class TaskError(ValueError):
    """A job this participant cannot compute, or a description no rule accepts."""


def sketch_spec(job: pb.JobDescription) -> SketchSpec:
    try:
        return spec_from_proto(sketch_pb2.SketchSpec.FromString(job.sketch_spec))
    except (DecodeError, ValueError, TypeError) as exc:
        raise TaskError(f"the job's sketch spec is invalid: {exc}") from None


def gsmp_recipe(job: pb.JobDescription) -> StatisticsRecipe:
    try:
        return recipe_from_pb(job.gsmp)
    except ValueError as exc:
        raise TaskError(f"the job's model is invalid: {exc}") from None


def dim(job: pb.JobDescription) -> int:
    """Coordinates of one participant's vector."""
    if job.kind == "sketch":
        return max(1, len(job.classes)) * (sketch_spec(job).size + 1)
    if job.kind == "dp_gsmp":
        return vector_size(gsmp_recipe(job).features.dim)
    raise TaskError(f"unknown job kind {job.kind!r}; known kinds: {', '.join(KINDS)}")


def is_integer(job: pb.JobDescription) -> bool:
    return job.kind == "sketch" and not sketch_spec(job).is_rff


def l2_sensitivity(job: pb.JobDescription) -> float:
    """Of the real (unrounded) vector; see the module docstring."""
    if job.kind == "sketch":
        spec = sketch_spec(job)
        return rff.L2_SENSITIVITY if spec.is_rff else math.sqrt(spec.repetitions + 1)
    if job.kind == "dp_gsmp":
        return 1.0
    raise TaskError(f"unknown job kind {job.kind!r}")


def exponent(job: pb.JobDescription) -> int:
    """The fixed-point grid 2**exponent of a real vector (0 for integer counts)."""
    if is_integer(job):
        return 0
    return math.floor(math.log2(l2_sensitivity(job) / (ROUNDING_SHARE * math.sqrt(dim(job)))))


def mechanism(job: pb.JobDescription) -> DistributedDiscreteGaussian:
    """The noise each participant adds, calibrated for the job's charge (public inputs only)."""
    if job.threshold < 1:
        raise TaskError("a job needs a threshold of at least one noise share")
    m = dim(job)
    sensitivity: float | Fraction = l2_sensitivity(job)
    if not is_integer(job):
        sensitivity = fixedpoint.l2_units(sensitivity, exponent(job), m)
    return DistributedDiscreteGaussian.for_rho(
        Fraction(job.rho), parties=job.threshold, l2_sensitivity=sensitivity, dim=m
    )


def value_bound(job: pb.JobDescription) -> int:
    """Bound on |coordinate| of a noised vector: every record adds at most 1 per coordinate
    (counts; unit-norm features; statistics with weights <= 1), plus the noise's far tail."""
    tail = NOISE_TAIL_SDS * math.sqrt(mechanism(job).sigma2_each)
    return math.ceil(job.max_records / 2.0 ** exponent(job) + 1 + tail)


def bits(job: pb.JobDescription, parties: int) -> int:
    return ring_bits(parties, job.value_bound)


def local_vector(job: pb.JobDescription, x: np.ndarray, y: np.ndarray | None) -> np.ndarray:
    """One participant's exact vector, on the grid (never sent without the gate)."""
    if len(x) > job.max_records:
        raise TaskError(f"{len(x)} records exceed the job's public bound of {job.max_records}")
    values = _real_vector(job, x, y)
    if is_integer(job):
        return values.astype(np.int64)
    return fixedpoint.encode(values, exponent(job))


def decode(job: pb.JobDescription, total: np.ndarray) -> np.ndarray:
    """The unmasked integer sum in the statistics' own units."""
    if is_integer(job):
        return np.asarray(total, dtype=np.int64)
    return fixedpoint.decode(total, exponent(job))


def _real_vector(job: pb.JobDescription, x: np.ndarray, y: np.ndarray | None) -> np.ndarray:
    if job.kind == "sketch":
        spec = sketch_spec(job)
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
    if job.kind == "dp_gsmp":
        recipe = gsmp_recipe(job)
        if y is None:
            raise TaskError("a private GSMP fit needs targets (participant join --target COLUMN)")
        if x.ndim != 2 or x.shape[1] != recipe.features.input_dim:
            raise TaskError(
                f"the model takes {recipe.features.input_dim} columns, the data have {x.shape}"
            )
        stats: SufficientStatistics = recipe.statistics(torch.from_numpy(x), torch.from_numpy(y))
        return pack(stats, statistics_split(job.gsmp))
    raise TaskError(f"unknown job kind {job.kind!r}")
