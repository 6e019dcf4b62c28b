"""The wheel ships every module and data file of the source tree: a moved or new folder cannot be left out.

pyproject.toml lists the packages by hand (its package-dir maps core/,
agents/, tui/ and package/ onto ``mlfleet``), so a folder added to core/
that nobody lists imports fine from the checkout and fails only for a user
who installed the wheel. Here the wheel is built from a copy of the source,
installed into a fresh venv that borrows only the dependencies from the test
venv, and every module is imported from there, outside the checkout.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from conftest import cpu_heavy

pytestmark = cpu_heavy  # the module's first test builds a wheel and a venv (its fixture) first

REPO = Path(__file__).resolve().parent.parent
SOURCE_ROOTS = ("core", "agents", "tui", "package")
DATA_SUFFIXES = (".sql", ".tcss")  # the migrations and the TUI's stylesheet: read at run time, not imported

# Run in the installed venv: find and import each module, say where it came from or why it failed.
_IMPORT_ALL = r"""
import importlib, importlib.util, json, sys, traceback
out = {}
for name in json.loads(sys.argv[1]):
    try:
        spec = importlib.util.find_spec(name)
    except Exception as e:
        out[name] = {"error": f"{type(e).__name__}: {e}"}
        continue
    if spec is None:
        out[name] = {"error": "not found"}
        continue
    entry = out[name] = {"file": spec.origin}
    if name.rpartition(".")[2] == "__main__":
        continue  # found is shipped; importing it would run the program
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        entry["error"] = f"ModuleNotFoundError: {e}"
        entry["missing"] = e.name
    except Exception:
        entry["error"] = traceback.format_exc(limit=3)
with open(sys.argv[2], "w") as f:  # not stdout: a module may print when imported
    json.dump(out, f)
"""


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _package_dirs() -> dict[str, str]:
    """Import name of each source root, from pyproject's package-dir (``{"mlfleet.core": "core", ...}`` reversed)."""
    mapping = _pyproject()["tool"]["setuptools"]["package-dir"]
    return {folder: name for name, folder in mapping.items()}


def _source_modules() -> list[str]:
    roots = _package_dirs()
    names = []
    for folder in SOURCE_ROOTS:
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = list(path.relative_to(REPO / folder).with_suffix("").parts)
            names.append(".".join([roots[folder], *(parts[:-1] if parts[-1] == "__init__" else parts)]))
    return names


def _data_files() -> list[str]:
    """Each data file as its path inside the installed ``mlfleet`` tree (``mlfleet/core/store/migrations/...``)."""
    roots = _package_dirs()
    found = []
    for folder in SOURCE_ROOTS:
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix in DATA_SUFFIXES and "__pycache__" not in path.parts:
                found.append("/".join([*roots[folder].split("."), *path.relative_to(REPO / folder).parts]))
    return found


def _optional_missing_here(top: str) -> bool:
    """A third-party package that is not installed in the test venv either (an extra such as `adapters`)."""
    import importlib.util

    return top.split(".")[0] != "mlfleet" and importlib.util.find_spec(top.split(".")[0]) is None


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(venv python, its site-packages) with mlfleet installed from a wheel built from a copy of the source."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    shutil.copy2(REPO / "pyproject.toml", src)
    shutil.copy2(REPO / "README.md", src)  # pyproject's readme
    for folder in SOURCE_ROOTS:  # a copy: no build/ or egg-info left in the checkout, nothing stale taken from one
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    dist = root / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)],
                   check=True, capture_output=True, timeout=300)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True,
                   timeout=120)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
                    *map(str, dist.glob("mlfleet-*.whl"))], check=True, capture_output=True, timeout=300)
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # Only the dependencies come from the test venv: a plain path entry, so its editable mlfleet finder stays off.
    (site / "borrowed-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python, site


def test_every_module_of_the_source_tree_imports_from_the_installed_wheel(installed: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    python, site = installed
    names = _source_modules()
    assert len(names) > 100 and "mlfleet.core.cli.main" in names
    # -P and a cwd outside the checkout: nothing but the venv (and the borrowed dependencies) is on sys.path.
    report = tmp_path / "found.json"
    proc = subprocess.run([str(python), "-P", "-c", _IMPORT_ALL, json.dumps(names), str(report)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(report.read_text())
    wrong = []
    for name in names:
        entry = found[name]
        where = entry.get("file") or ""
        if "file" in entry and not where.startswith(str(site / "mlfleet")):
            wrong.append(f"{name}: imported from {where}, not from the wheel")
        elif "error" in entry and not (entry.get("missing") and _optional_missing_here(entry["missing"])):
            wrong.append(f"{name}: {entry['error'].strip()}")
    # A module whose optional dependency is absent here as well (the adapters extra) is still found in the
    # wheel above; it is imported fully where that extra is installed.
    assert not wrong, f"{len(wrong)} module(s) of the source tree do not import from the wheel:\n" + "\n".join(wrong)


def test_the_wheel_carries_the_migrations_and_the_stylesheets(installed: tuple[Path, Path]) -> None:
    _, site = installed
    files = _data_files()
    assert any(f.endswith(".sql") for f in files) and any(f.endswith(".tcss") for f in files), files
    missing = [f for f in files if not (site / f).is_file()]
    assert not missing, "package data missing from the wheel (pyproject's package-data):\n" + "\n".join(missing)


def test_every_source_package_is_listed_in_pyproject() -> None:
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    roots = _package_dirs()
    folders, loose = set(), []
    for folder in SOURCE_ROOTS:
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.parent.relative_to(REPO / folder)
            if "__pycache__" in rel.parts:
                continue
            name = ".".join([roots[folder], *rel.parts])
            if (path.parent / "__init__.py").is_file():
                folders.add(name)
            else:
                loose.append(str(path.relative_to(REPO)))
    assert not loose, "modules in a folder without __init__.py are not shipped:\n" + "\n".join(loose)
    unlisted = sorted(folders - listed)
    assert not unlisted, "packages missing from pyproject's [tool.setuptools] packages:\n" + "\n".join(unlisted)
    gone = sorted(listed - folders)
    assert not gone, "pyproject lists packages that have no folder:\n" + "\n".join(gone)
