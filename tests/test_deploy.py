"""deploy/: every file parses, every command it runs is a real gramfed (or ray) command line,
and the job files it names exist and validate."""

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import ray.scripts.scripts
import typer
import yaml

from gramfed.platform.cli.main import app
from gramfed.platform.jobspec import load_job

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
YAML_FILES = sorted([*DEPLOY.glob("*.yaml"), *DEPLOY.glob("*.yml")])
CLUSTER_COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)
SEPARATORS = {"&&", "||", ";", "|"}
REDIRECTIONS = {">", ">>", "<", "2>", "&>"}


# -- extracting commands ----------------------------------------------------------------------
def split_shell(script: str) -> Iterator[list[str]]:
    """The simple commands of a shell line: split at ``&& || ; |``, redirections dropped,
    ``sh -c '...'`` opened up."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    argv: list[str] = []
    tokens = iter(lexer)
    for token in tokens:
        if token in SEPARATORS:
            yield from _expand(argv)
            argv = []
        elif token in REDIRECTIONS:
            next(tokens, None)
        else:
            argv.append(token)
    yield from _expand(argv)


def _expand(argv: list[str]) -> Iterator[list[str]]:
    if len(argv) >= 3 and argv[0] in ("sh", "bash") and argv[1] == "-c":
        yield from split_shell(argv[2])
    elif argv:
        yield argv


def as_commands(command: str | list[str]) -> Iterator[list[str]]:
    """A compose/Kubernetes/Dockerfile command: a shell string or an exec-form list."""
    if isinstance(command, str):
        yield from split_shell(command)
    elif command[:1] == ["CMD-SHELL"]:
        yield from split_shell(command[1])
    else:
        yield from _expand([str(c) for c in command[1:] if c] if command[0] == "CMD" else command)


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def dockerfile_commands() -> list[list[str]]:
    commands = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "RUN":
            commands += split_shell(rest)
        elif keyword in ("CMD", "ENTRYPOINT"):
            commands += as_commands(json.loads(rest) if rest.startswith("[") else rest)
    return commands


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def containers(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                yield from value
            else:
                yield from containers(value)
    elif isinstance(node, list):
        for item in node:
            yield from containers(item)


def yaml_commands(path: Path) -> list[list[str]]:
    commands: list[list[str]] = []
    for doc in load_yaml(path):
        for key in CLUSTER_COMMAND_KEYS:
            for line in doc.get(key, []):
                commands += split_shell(line)
        for service in doc.get("services", {}).values():
            for key in ("entrypoint", "command"):
                if key in service:
                    commands += as_commands(service[key])
            if "healthcheck" in service:
                commands += as_commands(service["healthcheck"]["test"])
        if doc.get("kind") == "RayJob":
            commands += split_shell(doc["spec"]["entrypoint"])
        for container in containers(doc):
            argv = [*container.get("command", []), *container.get("args", [])]
            if argv:
                commands += as_commands(argv)
        for group in ray_groups(doc):
            params = group.get("rayStartParams", {})
            head = ["--head"] if "serviceType" in group or group is head_group(doc) else []
            commands.append(["ray", "start", *head, *(f"--{k}={v}" for k, v in params.items())])
    return commands


def head_group(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec = doc.get("spec", {})
    return spec.get("rayClusterSpec", spec).get("headGroupSpec")


def ray_groups(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc.get("kind") not in ("RayCluster", "RayJob"):
        return []
    spec = doc["spec"].get("rayClusterSpec", doc["spec"])
    return [spec["headGroupSpec"], *spec["workerGroupSpecs"]]


RUNS_GRAMFED = {"Dockerfile", "docker-compose.yml", "ray-cluster.yaml", "kuberay-rayjob.yaml"}
ALL_COMMANDS = {path.name: yaml_commands(path) for path in YAML_FILES} | {
    "Dockerfile": dockerfile_commands()
}


# -- resolving them against the real command-line apps ----------------------------------------
def check_command_line(group: Any, argv: list[str]) -> Any:
    """Walk subcommands, then let the leaf command parse the rest; returns its parameters."""
    command, rest = group, argv[1:]
    while hasattr(command, "commands") and rest and not rest[0].startswith("-"):
        if rest[0] not in command.commands:
            pytest.fail(f"{shlex.join(argv)}: no command {rest[0]!r}")
        command, rest = command.commands[rest[0]], rest[1:]
    if rest == ["--help"]:  # valid for every command and group
        return {}
    if hasattr(command, "commands"):
        pytest.fail(f"{shlex.join(argv)}: names a command group, not a command")
    try:
        return command.make_context(argv[0], list(rest)).params
    except Exception as exc:  # click's usage errors (typer vendors its own click)
        pytest.fail(f"{shlex.join(argv)}: {exc}")


GRAMFED = typer.main.get_command(app)
RAY = ray.scripts.scripts.cli


def test_every_yaml_file_parses() -> None:
    assert {p.name for p in YAML_FILES} == {
        "docker-compose.yml",
        "ray-cluster.yaml",
        "kuberay-raycluster.yaml",
        "kuberay-rayjob.yaml",
    }
    for path in YAML_FILES:
        assert load_yaml(path), path


@pytest.mark.parametrize("name", sorted(ALL_COMMANDS))
def test_every_command_is_a_real_command_line(name: str) -> None:
    commands = ALL_COMMANDS[name]
    gramfed = [argv for argv in commands if argv[0] == "gramfed"]
    assert bool(gramfed) == (name in RUNS_GRAMFED), f"{name}: gramfed commands {gramfed}"
    for argv in gramfed:
        check_command_line(GRAMFED, argv)
    for argv in commands:
        if argv[0] == "ray":
            check_command_line(RAY, argv)


def test_the_checker_refuses_unknown_commands_and_options() -> None:
    for argv in (
        ["gramfed", "launch", "job.toml"],
        ["gramfed", "run", "job.toml", "--adress", "auto"],
        ["gramfed", "jobs"],
        ["ray", "start", "--haed"],
    ):
        with pytest.raises(pytest.fail.Exception):
            check_command_line(RAY if argv[0] == "ray" else GRAMFED, argv)
    assert list(split_shell("sh -c 'test -f k || gramfed version > /dev/null'")) == [
        ["test", "-f", "k"],
        ["gramfed", "version"],
    ]


def test_rayjob_runs_the_example_job_on_its_cluster() -> None:
    (job,) = load_yaml(DEPLOY / "kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    argv = shlex.split(job["spec"]["entrypoint"])
    params = check_command_line(GRAMFED, argv)
    assert argv[:2] == ["gramfed", "run"] and params["address"] == "auto"


# -- job files --------------------------------------------------------------------------------
def image_paths() -> dict[str, Path]:
    """Container path -> repository path, from the Dockerfile's COPY instructions."""
    mapping, workdir = {}, "/"
    for keyword, rest in dockerfile_instructions():
        if keyword == "WORKDIR":
            workdir = rest
        elif keyword == "COPY":
            *sources, dest = rest.split()
            into_folder = dest.endswith("/") or len(sources) > 1
            dest = dest if dest.startswith("/") else f"{workdir.rstrip('/')}/{dest}"
            dest = dest.replace("/./", "/").rstrip("/")
            for source in sources:
                target = f"{dest}/{Path(source).name}" if into_folder else dest
                mapping[target] = ROOT / source
    return mapping


def repo_path(container_path: str) -> Path:
    mapping = image_paths()
    for prefix in sorted(mapping, key=len, reverse=True):
        if container_path == prefix or container_path.startswith(prefix + "/"):
            return mapping[prefix] / container_path[len(prefix) :].lstrip("/")
    raise AssertionError(f"{container_path} is not in the image")


def test_every_job_file_named_exists_and_validates() -> None:
    named = {
        token
        for commands in ALL_COMMANDS.values()
        for argv in commands
        if argv[0] == "gramfed"
        for token in argv
        if token.endswith(".toml")
    }
    assert named
    for token in named:
        path = repo_path(token) if token.startswith("/") else ROOT / token
        assert path.is_file(), f"{token} -> {path} does not exist"
        spec = load_job(path)
        assert spec.job.kind == "gsmp_fit"


def test_mounts_put_the_job_files_where_the_image_has_them() -> None:
    assert repo_path("/jobs") == DEPLOY / "jobs"
    (compose,) = load_yaml(DEPLOY / "docker-compose.yml")
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if target == "/jobs":
                assert (DEPLOY / source).resolve() == DEPLOY / "jobs"
    (cluster,) = load_yaml(DEPLOY / "ray-cluster.yaml")
    assert (ROOT / cluster["file_mounts"]["/jobs"]).resolve() == DEPLOY / "jobs"


# -- the image and the manifests --------------------------------------------------------------
def test_dockerfile_builds_gramfed_from_the_repository_on_cuda() -> None:
    instructions = dockerfile_instructions()
    base = next(rest for keyword, rest in instructions if keyword == "FROM")
    assert re.match(r"(nvidia/cuda:\S+-runtime-|rayproject/ray(-ml)?:\S+-gpu)", base), base
    mapping = image_paths()
    copied = next(dest for dest, src in mapping.items() if src == ROOT / "pyproject.toml")
    project = str(Path(copied).parent)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for folder in pyproject["tool"]["setuptools"]["package-dir"].values():
        assert f"{project}/{folder}" in mapping, f"the image does not copy {folder}/"
    installs = [argv for argv in dockerfile_commands() if argv[:2] == ["pip", "install"]]
    assert any(project in argv for argv in installs), "no pip install of the repository"


def test_ray_versions_agree() -> None:
    arg = next(
        rest.split("=", 1)[1]
        for keyword, rest in dockerfile_instructions()
        if keyword == "ARG" and rest.startswith("RAY_VERSION=")
    )
    for name in ("kuberay-raycluster.yaml", "kuberay-rayjob.yaml"):
        for doc in load_yaml(DEPLOY / name):
            if doc["kind"] in ("RayCluster", "RayJob"):
                spec = doc["spec"].get("rayClusterSpec", doc["spec"])
                assert spec["rayVersion"] == arg, name


def test_cluster_launcher_config_follows_rays_schema() -> None:
    (config,) = load_yaml(DEPLOY / "ray-cluster.yaml")
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    workers = [
        t for n, t in config["available_node_types"].items() if n != config["head_node_type"]
    ]
    assert workers and all(t["max_workers"] >= 1 for t in workers)
    assert "--gpus all" in config["docker"]["worker_run_options"]


def test_kuberay_workers_ask_for_gpus_and_mounts_resolve() -> None:
    for name in ("kuberay-raycluster.yaml", "kuberay-rayjob.yaml"):
        for doc in load_yaml(DEPLOY / name):
            if doc["kind"] not in ("RayCluster", "RayJob"):
                continue
            assert doc["apiVersion"] == "ray.io/v1"
            *_, worker = ray_groups(doc)
            (container,) = worker["template"]["spec"]["containers"]
            assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
            for group in ray_groups(doc):
                pod = group["template"]["spec"]
                volumes = {v["name"] for v in pod.get("volumes", [])}
                for c in pod["containers"]:
                    for mount in c.get("volumeMounts", []):
                        assert mount["name"] in volumes, f"{name}: {mount['name']} undefined"


def test_compose_runs_a_head_two_workers_and_a_job() -> None:
    (compose,) = load_yaml(DEPLOY / "docker-compose.yml")
    services = compose["services"]
    commands = {
        name: list(as_commands(s["command"])) for name, s in services.items() if "command" in s
    }
    heads = [n for n, c in commands.items() if c[0][:2] == ["ray", "start"] and "--head" in c[0]]
    workers = [n for n, c in commands.items() if c[0][:2] == ["ray", "start"] and n not in heads]
    jobs = [
        n for n, c in commands.items() if c[-1][:2] in (["gramfed", "run"], ["gramfed", "submit"])
    ]
    assert len(heads) == 1 and len(workers) == 2 and jobs
    for service in services.values():
        for dependency in service.get("depends_on", {}):
            assert dependency in services
