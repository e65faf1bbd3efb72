"""The project keeps its promises about itself: the README is true and the layers hold."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from gateway.settings import SETTINGS

ROOT = Path(__file__).resolve().parents[2]


def _readme() -> str:
    return (ROOT / "README.md").read_text("utf-8")


def test_readme_documents_every_setting() -> None:
    readme = _readme()
    missing = [s.env for s in SETTINGS if f"`{s.env}`" not in readme or f"`{s.flag}`" not in readme]
    assert missing == []


def test_ci_runs_exactly_the_readme_test_command() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", _readme(), flags=re.S)
    test_command = next(b.strip() for b in blocks if "pytest" in b)
    assert test_command in (ROOT / ".ci" / "run").read_text("utf-8")


def test_readme_start_command_installs_and_serves() -> None:
    blocks = re.findall(r"```sh\n(.*?)```", _readme(), flags=re.S)
    start = next(b.strip() for b in blocks if "muster serve" in b)
    assert "pip install" in start


def test_imports_only_point_down() -> None:
    linter = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    result = subprocess.run(
        [linter, "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_package_ships_in_the_wheel() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "gateway").rglob("__init__.py")
    }
    assert found - listed == set(), "packages missing from [tool.setuptools] packages"


def test_the_dashboards_templates_and_assets_ship_in_the_package() -> None:
    """Every template and asset matches a package-data pattern, so `pip install` (not a
    checkout) serves the dashboard whole."""
    import fnmatch
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["gateway.api.dashboard"]
    base = ROOT / "gateway" / "api" / "dashboard"
    files = [
        path.relative_to(base).as_posix()
        for folder in ("templates", "static")
        for path in (base / folder).iterdir()
    ]
    assert files
    assert [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)] == []
