"""Which format a runs export writes: the one asked for, or the one the file's name promises.

Kept apart from the export itself (DuckDB, numpy) so that the CLI checks
``--output``/``--format`` before it starts or asks a controller, and the
controller checks the same for any other client (the TUI, a script).
"""

from __future__ import annotations

from pathlib import Path

from mlfleet.core.base.errors import UsageError

FORMATS = ("parquet", "csv")
# File name endings and the format they promise (DuckDB compresses a CSV by its .gz or .zst ending).
ENDINGS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".csv.gz": "csv", ".csv.zst": "csv"}


def export_format(output: str, fmt: str | None) -> str:
    """The format to write ``output`` in: ``fmt``, else the one its name ends in; one sentence when they disagree.

    Why refuse rather than guess: ``--output r.csv`` once wrote Parquet into
    r.csv (the default won over the name), and the file only failed later, in
    whatever read it. A name's ending is a promise to the next program.
    """
    name = Path(output).name.lower()
    ending = next((e for e in sorted(ENDINGS, key=len, reverse=True) if name.endswith(e)), None)
    if fmt is not None and fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; use {' or '.join(FORMATS)}")
    if ending is None:
        if fmt is None:
            raise UsageError(f"cannot tell the format of {Path(output).name} from its name; end it in .parquet or "
                             ".csv, or give --format parquet or --format csv")
        return fmt
    if fmt is not None and fmt != ENDINGS[ending]:
        raise UsageError(f"{Path(output).name} ends in {ending} but --format is {fmt}: the file would not be what "
                         f"its name says; leave out --format, or name the file for {fmt}")
    return ENDINGS[ending]


def compression(output: str) -> str | None:
    """gzip or zstd for a CSV named .csv.gz or .csv.zst; said to COPY outright, since COPY writes a temporary name
    first and would go by that name's ending (none) instead."""
    name = Path(output).name.lower()
    return "gzip" if name.endswith(".csv.gz") else "zstd" if name.endswith(".csv.zst") else None
