"""Sketch files: protobuf messages (``protos/sketch.proto``) with a magic string and checksum.

A file is a ``SketchFile``: magic ``gramfed-sketch``, version 3, the serialised ``SketchSet``
and its SHA-256. Version 3 specs name their gaussian frequency design (``orthogonal`` or
``iid``, ``gramfed.workers.sketch.rff``); version 2 files, whose gaussian sketches all had iid
frequencies in cos/sin pairs, are read as such. Version 1 files, whose features had random
phases, are refused rather than read with features they were not built with.

A protobuf parser accepts many truncated or altered byte strings as some valid message, so the
checksum is what makes corruption detectable; loading then rebuilds every sketch through the
same validation as a fresh one (known kernel, consistent sizes, finite values, released) and
refuses anything else with a one-line ``SketchFileError``.

Only released sketches (with ledger provenance) are written: an unreleased one holds exact
sums of private data.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from google.protobuf.message import DecodeError

from gramfed.protos import sketch_pb2 as pb
from gramfed.workers.sketch.sketch import NoiseProfile, Provenance, Sketch
from gramfed.workers.sketch.spec import SketchSpec

MAGIC = "gramfed-sketch"
VERSION = 3
IID_ONLY_VERSION = 2  # before the orthogonal design: every gaussian sketch drew iid frequencies
PathLike = str | os.PathLike[str]


class SketchFileError(ValueError):
    """A sketch file that is missing, corrupted, truncated or inconsistent (one-line message)."""


def spec_to_proto(spec: SketchSpec) -> pb.SketchSpec:
    return pb.SketchSpec(
        kernel=spec.kernel,
        input_dim=spec.input_dim,
        seed=spec.seed,
        bandwidth=spec.bandwidth or 0.0,
        features=spec.features,
        repetitions=spec.repetitions,
        hashes=spec.hashes,
        buckets=spec.buckets,
        projection_dim=spec.projection_dim or 0,
        frequencies=spec.frequencies or "",
    )


def spec_from_proto(s: pb.SketchSpec) -> SketchSpec:
    """The spec a message describes; ``SketchSpec`` raises ``ValueError`` on a bad one."""
    return SketchSpec(
        kernel=s.kernel,  # type: ignore[arg-type]
        input_dim=s.input_dim,
        seed=s.seed,
        bandwidth=s.bandwidth or None,
        features=s.features,
        repetitions=s.repetitions,
        hashes=s.hashes,
        buckets=s.buckets,
        projection_dim=s.projection_dim or None,
        frequencies=s.frequencies or None,  # type: ignore[arg-type]
    )


def to_proto(sketch: Sketch) -> pb.Sketch:
    s = sketch.spec
    msg = pb.Sketch(
        spec=spec_to_proto(s),
        count=sketch.count,
        noise=pb.NoiseProfile(
            family=sketch.noise.family,
            subgaussian=sketch.noise.subgaussian,
            subexponential=sketch.noise.subexponential,
            variance=sketch.noise.variance,
        ),
        provenance=[
            pb.Provenance(
                ledger_uuid=p.ledger_uuid,
                ledger_id=p.ledger_id,
                entry_hash=p.entry_hash,
                pool=p.pool,
                rho=str(p.rho),
                delta=p.delta,
                unit=p.unit,
                neighbouring=p.neighbouring,
                mechanism=p.mechanism,
            )
            for p in sketch.provenance
        ],
        label=sketch.label,
    )
    if s.is_rff:
        msg.values.extend(sketch.values.tolist())
    else:
        msg.counts.extend(sketch.values.tolist())
    return msg


def from_proto(msg: pb.Sketch) -> Sketch:
    """Rebuild and validate a sketch; raises ``ValueError`` naming the first problem."""
    spec = spec_from_proto(msg.spec)
    if msg.counts if spec.is_rff else msg.values:
        raise ValueError(f"a {spec.kernel} sketch holds the wrong kind of values")
    values = (
        np.asarray(msg.values, dtype=np.float64)
        if spec.is_rff
        else np.asarray(msg.counts, dtype=np.int64)
    )
    noise = NoiseProfile(
        msg.noise.family, msg.noise.subgaussian, msg.noise.subexponential, msg.noise.variance
    )
    if (
        not all(np.isfinite([noise.subgaussian, noise.subexponential, noise.variance]))
        or min(noise.subgaussian, noise.subexponential, noise.variance) < 0
    ):
        raise ValueError("the noise profile must be finite and non-negative")
    provenance = tuple(
        Provenance(
            p.ledger_uuid,
            p.ledger_id,
            p.entry_hash,
            p.pool,
            _fraction(p.rho),
            p.delta,
            p.unit,
            p.neighbouring,
            p.mechanism,
        )
        for p in msg.provenance
    )
    return Sketch(spec, values, msg.count, noise, provenance, msg.label)


def encode(sketches: Sequence[Sketch]) -> bytes:
    """File bytes for one or more released sketches."""
    if not sketches:
        raise ValueError("no sketches to write")
    for sketch in sketches:
        if not sketch.released:
            raise ValueError(
                "refusing to write a sketch that was not released through the privacy gate"
            )
    payload = pb.SketchSet(sketches=[to_proto(s) for s in sketches]).SerializeToString()
    digest = hashlib.sha256(payload).digest()
    return pb.SketchFile(
        magic=MAGIC, version=VERSION, payload=payload, sha256=digest
    ).SerializeToString()


def decode(data: bytes, source: str = "sketch") -> list[Sketch]:
    """Sketches from file bytes; ``SketchFileError`` ("SOURCE: problem") for any defect."""
    envelope = pb.SketchFile()
    try:
        envelope.ParseFromString(data)
    except DecodeError:
        raise SketchFileError(
            f"{source}: not a gramfed sketch file (corrupted or truncated)"
        ) from None
    if envelope.magic != MAGIC:
        raise SketchFileError(f"{source}: not a gramfed sketch file (no '{MAGIC}' header)")
    if envelope.version not in (VERSION, IID_ONLY_VERSION):
        raise SketchFileError(
            f"{source}: sketch file version {envelope.version} is not supported (expected"
            f" {VERSION} or {IID_ONLY_VERSION})"
        )
    if hashlib.sha256(envelope.payload).digest() != envelope.sha256:
        raise SketchFileError(f"{source}: checksum mismatch (the file is corrupted or truncated)")
    contents = pb.SketchSet()
    try:
        contents.ParseFromString(envelope.payload)
    except DecodeError:
        raise SketchFileError(f"{source}: the sketch data cannot be parsed") from None
    if not contents.sketches:
        raise SketchFileError(f"{source}: the file holds no sketch")
    out = []
    for i, msg in enumerate(contents.sketches):
        if msg.spec.kernel == "gaussian" and not msg.spec.frequencies:
            if envelope.version != IID_ONLY_VERSION:
                raise SketchFileError(f"{source}: sketch {i} names no frequency design")
            msg.spec.frequencies = "iid"
        try:
            sketch = from_proto(msg)
        except ValueError as exc:
            raise SketchFileError(f"{source}: sketch {i}: {exc}") from None
        if not sketch.released:
            raise SketchFileError(f"{source}: sketch {i} has no privacy-ledger provenance")
        out.append(sketch)
    return out


def save_sketches(sketches: Sequence[Sketch], path: PathLike) -> Path:
    """Write released sketches to ``path`` atomically (a reader never sees half a file)."""
    target = Path(path)
    data = encode(sketches)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_sketches(path: PathLike) -> list[Sketch]:
    """Read and validate every sketch in a file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise SketchFileError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise SketchFileError(f"{p}: is a directory, not a sketch file") from None
    except OSError as exc:
        raise SketchFileError(f"{p}: cannot read ({exc.strerror or type(exc).__name__})") from None
    return decode(data, str(p))


def load_sketch(path: PathLike) -> Sketch:
    """Read a file that holds exactly one sketch."""
    sketches = load_sketches(path)
    if len(sketches) != 1:
        raise SketchFileError(
            f"{path}: holds {len(sketches)} sketches (one per class); expected one"
        )
    return sketches[0]


def _fraction(text: str) -> Fraction:
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"provenance rho {text!r} is not an exact fraction") from None
    if value < 0:
        raise ValueError(f"provenance rho {text!r} is negative")
    return value
