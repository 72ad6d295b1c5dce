"""The generated gramfed.v1 modules are in sync with protos/federation.proto."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The generators' own versions, stamped into their output: a newer grpcio-tools patch release
# changes them and nothing else (the runtime checks them at import, against pyproject's floor).
VERSION_STAMPS = (
    (re.compile(r"GRPC_GENERATED_VERSION = '[^']*'"), "GRPC_GENERATED_VERSION = 'X'"),
    (re.compile(r"Protobuf Python Version: \S+"), "Protobuf Python Version: X"),
    (re.compile(r"(Domain\.PUBLIC,)\s*\d+,\s*\d+,\s*\d+,"), r"\1 X,"),
)


def _unstamped(source: str) -> str:
    for stamp, placeholder in VERSION_STAMPS:
        source = stamp.sub(placeholder, source)
    return source


def test_generated_modules_are_in_sync_with_the_proto(tmp_path: Path) -> None:
    # The virtual include path names the file gramfed/protos/federation.proto, so the stubs
    # import `gramfed.protos.federation_pb2` (protoc's imports are absolute).
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-Igramfed/protos={ROOT / 'protos'}",
            f"--python_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            str(ROOT / "protos" / "federation.proto"),
        ],
        check=True,
    )
    for name in ("federation_pb2.py", "federation_pb2_grpc.py"):
        regenerated = _unstamped((tmp_path / "gramfed" / "protos" / name).read_text())
        assert regenerated == _unstamped((ROOT / "protos" / name).read_text()), (
            f"protos/{name} is stale: regenerate it with `.venv/bin/python -m grpc_tools.protoc"
            " -Igramfed/protos=protos --python_out=OUT --grpc_python_out=OUT"
            " protos/federation.proto` and copy OUT/gramfed/protos/*.py into protos/"
        )


def test_package_and_service_are_versioned() -> None:
    from gramfed.protos import federation_pb2

    service = federation_pb2.DESCRIPTOR.services_by_name["Coordinator"]
    assert service.full_name == "gramfed.v1.Coordinator"
    assert {m.name for m in service.methods} == {
        "Register",
        "Heartbeat",
        "PullTask",
        "SubmitResult",
    }
    for request in ("RegisterRequest", "HeartbeatRequest", "PullRequest", "ResultChunk"):
        fields = federation_pb2.DESCRIPTOR.message_types_by_name[request].fields_by_name
        assert fields["binding"].message_type.full_name == "gramfed.v1.Binding"
