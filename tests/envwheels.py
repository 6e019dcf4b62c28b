"""Tiny pure-Python wheels made by hand, and a wheelhouse laid out as the agent expects (tests only).

WHY by hand: the environment tests must never reach a package index, and a
wheel is only a zip with METADATA, WHEEL and a RECORD of every file's hash.
"""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

from mlfleet.core.base.models import EnvPlan, PinnedWheel


def make_wheel(out_dir: Path, name: str, version: str, files: dict[str, str],
               scripts: dict[str, str] | None = None, requires: list[str] | None = None) -> Path:
    """A ``py3-none-any`` wheel of ``files`` (path -> text), with console ``scripts`` (name -> "mod:func")."""
    dist = f"{name.replace('-', '_')}-{version}"
    info = f"{dist}.dist-info"
    entries = dict(files)
    entries[f"{info}/METADATA"] = (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
                                   + "".join(f"Requires-Dist: {r}\n" for r in requires or []))
    entries[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: mlfleet-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    if scripts:
        entries[f"{info}/entry_points.txt"] = "[console_scripts]\n" + "".join(f"{k} = {v}\n" for k, v in scripts.items())
    records = []
    path = out_dir / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for arcname, text in entries.items():
            data = text.encode()
            wheel.writestr(zipfile.ZipInfo(arcname, date_time=(1980, 1, 1, 0, 0, 0)), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            records.append(f"{arcname},sha256={digest},{len(data)}")
        records.append(f"{info}/RECORD,,")
        wheel.writestr(zipfile.ZipInfo(f"{info}/RECORD", date_time=(1980, 1, 1, 0, 0, 0)), "\n".join(records) + "\n")
    return path


def pinned(wheel: Path, name: str, version: str) -> PinnedWheel:
    data = wheel.read_bytes()
    return PinnedWheel(name=name, version=version, filename=wheel.name, sha256=hashlib.sha256(data).hexdigest(),
                       size=len(data))


def ship(state_dir: Path, wheel: Path) -> None:
    """Put ``wheel`` into the node's wheelhouse by content, as the workstation's SFTP does."""
    house = state_dir / "wheelhouse"
    house.mkdir(parents=True, exist_ok=True)
    (house / hashlib.sha256(wheel.read_bytes()).hexdigest()).write_bytes(wheel.read_bytes())


def plan_for(wheels: list[PinnedWheel], python: str, version: str, setup: list[str] | None = None,
             salt: str = "") -> EnvPlan:
    """A plan with an env_hash over what it holds (the workstation's formula is its own; any hex works here)."""
    text = "\n".join([python, version, *(f"{w.name}=={w.version} sha256:{w.sha256}" for w in wheels),
                      *(setup or []), salt])
    return EnvPlan(env_hash=hashlib.sha256(text.encode()).hexdigest(), python=python, python_version=version,
                   platform="x86_64-manylinux_2_36", wheels=wheels, setup=list(setup or []))
