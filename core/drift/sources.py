"""What REF and CUR name: Parquet, CSV or JSON files or globs (or, elsewhere, a saved profile),
or a deployment's captured inputs (``--deployment NAME``: the Parquet files the controller writes).

A source becomes a DuckDB table function over its files; nothing is read
into Python here.
"""

from __future__ import annotations

import glob
import os
import re
from datetime import datetime, timezone
from dataclasses import dataclass
from pathlib import Path

from mlfleet.core.base.errors import UsageError

_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "csv", ".json": "json",
            ".jsonl": "json", ".ndjson": "json"}
_COMPRESSED = (".gz", ".zst")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class FileSource:
    """One side of a check: the files and their format."""

    label: str
    files: tuple[str, ...]
    fmt: str  # parquet | csv | json

    def table_function(self) -> str:
        """A DuckDB table function call that reads all the files (columns matched by name)."""
        files = ", ".join(sql_string(f) for f in self.files)
        reader = {"parquet": "read_parquet", "csv": "read_csv", "json": "read_json"}[self.fmt]
        return f"{reader}([{files}], union_by_name = true)"


# The columns every capture file has besides the inputs (core/deploy/capture_rows.py writes them);
# left out of a check: the reference has only the features.
CAPTURE_META = ("ts", "version", "replica_id", "run_id", "output")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class CaptureSource(FileSource):
    """A deployment's captured inputs: its Parquet files, rows at or after ``since_us`` (microseconds, UTC)."""

    since_us: int | None = None

    def table_function(self) -> str:
        where = f" where ts >= make_timestamp({int(self.since_us)})" if self.since_us is not None else ""
        return f"(select * exclude ({', '.join(CAPTURE_META)}) from {super().table_function()}{where})"


def resolve_captures(capture_dir: Path, deployment: str, since: float | None, since_words: str | None) -> CaptureSource:
    """The capture files of ``deployment`` (only the days from ``since`` on); a UsageError when there are none.

    Read straight from the controller's capture folder: the client runs on the controller's machine
    (single-user installs), and the data stays where it lies, as for files.
    """
    if not deployment or "/" in deployment or deployment.startswith("."):
        raise UsageError(f"--deployment {deployment!r}: give a deployment's name, as in 'mlfleet deploy list'")
    folder = capture_dir / deployment
    days = sorted(d.name for d in folder.iterdir() if d.is_dir() and _DAY.match(d.name)) if folder.is_dir() else []
    if since is not None:
        first = datetime.fromtimestamp(since, tz=timezone.utc).strftime("%Y-%m-%d")
        days = [d for d in days if d >= first]
    files = [f for d in days for f in sorted(glob.glob(os.path.join(glob.escape(str(folder / d)), "*.parquet")))]
    window = f" since {since_words} ago" if since_words else ""
    if not files:
        raise UsageError(f"--deployment {deployment}: no captured inputs{window} in {folder}; its replicas capture "
                         "with mlfleet.serve.capture and the controller writes them here every few seconds")
    return CaptureSource(f"deployment {deployment} captures{window}", tuple(files), "parquet",
                         None if since is None else int(since * 1_000_000))


def sql_string(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def sql_name(text: str) -> str:
    """A quoted SQL identifier."""
    return '"' + text.replace('"', '""') + '"'


def file_format(path: str) -> str | None:
    name = path.lower()
    for ext in _COMPRESSED:
        if name.endswith(ext):
            name = name[: -len(ext)]
    return _FORMATS.get(os.path.splitext(name)[1])


def looks_like_profile_name(spec: str) -> bool:
    """A bare word (no folder, no glob, no known extension) that is not an existing file."""
    return (not any(c in spec for c in _GLOB_CHARS) and "/" not in spec and file_format(spec) is None
            and not Path(spec).exists())


def resolve_files(spec: str, role: str) -> FileSource:
    """The files that ``spec`` (a path, a folder of files or a glob) names; a UsageError when there are none."""
    expanded = os.path.expanduser(spec)
    if os.path.isdir(expanded):
        matches = sorted(p for p in glob.glob(os.path.join(expanded, "**", "*"), recursive=True)
                         if os.path.isfile(p) and file_format(p))
    elif any(c in expanded for c in _GLOB_CHARS):
        matches = sorted(p for p in glob.glob(expanded, recursive=True) if os.path.isfile(p))
    elif os.path.isfile(expanded):
        matches = [expanded]
    else:
        raise UsageError(f"--{role} {spec}: no such file; give a Parquet, CSV or JSON file, a glob such as "
                         "'data/*.parquet', or the name of a profile saved with 'mlfleet drift profile'")
    if not matches:
        raise UsageError(f"--{role} {spec}: the pattern matches no files; check the path and quote the glob "
                         "so that the shell does not expand it")
    formats = {file_format(p) for p in matches}
    if None in formats:
        odd = next(p for p in matches if file_format(p) is None)
        raise UsageError(f"--{role} {spec}: {odd} is not a .parquet, .csv or .json(l) file; "
                         "rename it or narrow the glob")
    if len(formats) > 1:
        raise UsageError(f"--{role} {spec}: matches files of different formats ({', '.join(sorted(formats))}); "
                         "give one format per side")
    return FileSource(spec, tuple(os.path.abspath(p) for p in matches), formats.pop())
