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


def test_layering_workers_do_not_import_platform() -> None:
    for path in (ROOT / "workers").rglob("*.py"):
        assert "gramfed.platform" not in path.read_text(), path
    for path in (ROOT / "privacy").rglob("*.py"):
        text = path.read_text()
        assert "gramfed.workers" not in text and "gramfed.platform" not in text, path
