import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_stdlib_platform_is_not_shadowed_from_repo_root() -> None:
    code = "import platform, sysconfig; platform.system(); print(platform.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert Path(out).parent == Path(__import__("sysconfig").get_paths()["stdlib"])


def test_top_level_folders_have_no_init_and_import_as_gramfed() -> None:
    for folder in ("platform", "workers", "privacy", "protos"):
        assert not (ROOT / folder / "__init__.py").exists(), folder
    import gramfed.platform.datasets
    import gramfed.workers.gram

    assert Path(gramfed.workers.gram.__file__).parent == ROOT / "workers"
    assert Path(gramfed.platform.datasets.__file__).parent == ROOT / "platform" / "datasets"


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_layering_workers_do_not_import_platform() -> None:
    """DESIGN.md: platform -> workers, privacy, protos; workers -> privacy; privacy -> nothing."""
    for path in (ROOT / "workers").rglob("*.py"):
        upward = ("gramfed.platform", "gramfed.protos")
        assert not any(m.startswith(upward) for m in _imported_modules(path)), path
    for path in (ROOT / "privacy").rglob("*.py"):
        upward = ("gramfed.workers", "gramfed.platform")
        assert not any(m.startswith(upward) for m in _imported_modules(path)), path
