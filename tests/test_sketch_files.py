"""Sketch files: round trip, refusal of unreleased, corrupted, truncated or inconsistent files,
and the generated protobuf module in sync with protos/sketch.proto."""

import hashlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from gramfed.platform.sketch_files import (
    VERSION,
    SketchFileError,
    decode,
    encode,
    load_sketch,
    load_sketches,
    save_sketches,
    to_proto,
)
from gramfed.platform.sketch_release import release_sketch
from gramfed.privacy.budget import PoolSpec, Rho
from gramfed.privacy.gate import Gate
from gramfed.privacy.ledger import Ledger
from gramfed.privacy.rng import SeededBits
from gramfed.protos import sketch_pb2 as pb
from gramfed.workers.sketch.accumulate import accumulate
from gramfed.workers.sketch.sketch import Sketch
from gramfed.workers.sketch.spec import SketchSpec

ROOT = Path(__file__).resolve().parents[1]
RFF = SketchSpec("gaussian", 2, seed=5, bandwidth=0.5, features=64, projection_dim=1)
LSH = SketchSpec("l2", 2, seed=5, bandwidth=1.0, repetitions=8, hashes=2, buckets=16)


@pytest.fixture
def gate(tmp_path: Path, key_path: Path) -> Iterator[Gate]:
    with Ledger(tmp_path / "ledger.db", key_path, create=True) as ledger:
        g = Gate(ledger, rng=SeededBits(9), test_rng=True)
        g.create_pool(PoolSpec("d", Rho(10)))
        yield g


def released(gate: Gate, spec: SketchSpec) -> Sketch:
    x = np.random.default_rng(0).standard_normal((500, 2))
    return release_sketch(
        gate, "d:record", spec, lambda: accumulate(spec, x), rho=Fraction(1), requester="t"
    )[1]


@pytest.mark.parametrize("spec", [RFF, LSH], ids=["rff", "lsh"])
def test_round_trip_keeps_everything(spec: SketchSpec, gate: Gate, tmp_path: Path) -> None:
    sketch = released(gate, spec)
    path = save_sketches([sketch], tmp_path / "s.gfs")
    loaded = load_sketch(path)
    assert loaded.spec == sketch.spec and loaded.provenance == sketch.provenance
    np.testing.assert_array_equal(loaded.values, sketch.values)
    assert loaded.values.dtype == sketch.values.dtype
    assert (loaded.count, loaded.noise, loaded.rho) == (sketch.count, sketch.noise, sketch.rho)


def test_unreleased_sketches_are_never_written(tmp_path: Path) -> None:
    sums = accumulate(RFF, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="not released through the privacy gate"):
        save_sketches([Sketch(RFF, sums.values, sums.count)], tmp_path / "x.gfs")
    assert not (tmp_path / "x.gfs").exists()


def test_corrupted_and_truncated_files_are_refused(gate: Gate, tmp_path: Path) -> None:
    data = encode([released(gate, RFF)])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    for bad, why in [
        (bytes(flipped), "checksum mismatch|corrupted"),
        (data[: len(data) - 7], "corrupted or truncated"),
        (b"", "no 'gramfed-sketch' header"),
        (b"\x00\x01garbage", "not a gramfed sketch file"),
    ]:
        with pytest.raises(SketchFileError, match=why):
            decode(bad, "f.gfs")
    path = tmp_path / "half.gfs"
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(SketchFileError, match=rf"^{path}: "):
        load_sketches(path)
    with pytest.raises(SketchFileError, match="no such file"):
        load_sketches(tmp_path / "missing.gfs")


def _reframe(msg: pb.Sketch, version: int = VERSION) -> bytes:
    """A file whose checksum is right but whose content is whatever ``msg`` says."""
    payload = pb.SketchSet(sketches=[msg]).SerializeToString()
    return pb.SketchFile(
        magic="gramfed-sketch",
        version=version,
        payload=payload,
        sha256=hashlib.sha256(payload).digest(),
    ).SerializeToString()


def test_inconsistent_contents_are_refused_even_with_a_valid_checksum(gate: Gate) -> None:
    good = pb.SketchFile()
    good.ParseFromString(encode([released(gate, RFF)]))
    contents = pb.SketchSet()
    contents.ParseFromString(good.payload)
    original = contents.sketches[0]

    def altered(change) -> pb.Sketch:  # type: ignore[no-untyped-def]
        msg = pb.Sketch()
        msg.CopyFrom(original)
        change(msg)
        return msg

    cases = [
        (altered(lambda m: m.values.__setitem__(3, float("nan"))), "finite"),
        (altered(lambda m: m.values.pop()), "has 64 values"),
        (altered(lambda m: setattr(m.spec, "kernel", "cosine")), "unknown kernel"),
        (altered(lambda m: m.counts.append(3)), "wrong kind of values"),
        (altered(lambda m: m.ClearField("provenance")), "no privacy-ledger provenance"),
        (altered(lambda m: setattr(m.provenance[0], "rho", "x")), "exact fraction"),
        (altered(lambda m: setattr(m.noise, "variance", -1.0)), "non-negative"),
    ]
    for msg, why in cases:
        with pytest.raises(SketchFileError, match=why):
            decode(_reframe(msg), "f.gfs")
    # version 1 files hold random-phase features, not the cos/sin pairs sketches use now
    for other in (1, VERSION + 1):
        with pytest.raises(SketchFileError, match=f"version {other} is not supported"):
            decode(_reframe(original, version=other), "f.gfs")


def test_version_2_files_are_read_with_the_iid_frequencies_they_were_built_with(
    gate: Gate,
) -> None:
    """Version 2 predates the frequency design field: its gaussian sketches drew iid
    frequencies. A version 3 gaussian spec must name its design."""
    iid = released(gate, replace(RFF, frequencies="iid"))
    msg = to_proto(iid)
    msg.spec.ClearField("frequencies")
    [loaded] = decode(_reframe(msg, version=2), "old.gfs")
    assert loaded.spec == iid.spec and loaded.spec.frequencies == "iid"
    np.testing.assert_array_equal(loaded.values, iid.values)
    with pytest.raises(SketchFileError, match="sketch 0 names no frequency design"):
        decode(_reframe(msg), "new.gfs")
    [lsh] = decode(_reframe(to_proto(released(gate, LSH)), version=2), "old.gfs")
    assert lsh.spec.frequencies is None


def test_generated_module_is_in_sync_with_the_proto(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            str(ROOT / "protos" / "sketch.proto"),
        ],
        check=True,
    )
    regenerated = (tmp_path / "sketch_pb2.py").read_text()
    assert regenerated == (ROOT / "protos" / "sketch_pb2.py").read_text(), (
        "protos/sketch_pb2.py is stale: regenerate it with"
        " `.venv/bin/python -m grpc_tools.protoc -Iprotos --python_out=protos protos/sketch.proto`"
    )
