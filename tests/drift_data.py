"""Test data for the drift tests: numpy arrays written to Parquet, CSV or JSON by DuckDB (COPY ... TO)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np


def write(path: Path, columns: dict[str, np.ndarray | list], nan_is_null: bool = True) -> Path:
    """Write columns (equal lengths) to ``path``; the format follows the extension.

    Float NaN becomes SQL NULL unless ``nan_is_null`` is False; None in an
    object array is NULL. A length-0 table keeps its column types.
    """
    con = duckdb.connect()
    try:
        data = {name: np.asarray(values) if not isinstance(values, np.ndarray) else values
                for name, values in columns.items()}
        con.register("data", data)
        select = []
        for name, values in data.items():
            quoted = '"' + name.replace('"', '""') + '"'
            if nan_is_null and values.dtype.kind == "f":
                select.append(f"case when isnan({quoted}) then null else {quoted} end as {quoted}")
            else:
                select.append(quoted)
        fmt = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}[path.suffix]
        con.execute(f"copy (select {', '.join(select)} from data) to '{path}' (format {fmt})")
    finally:
        con.close()
    return path


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def write_sql(path: Path, select: str, seed: float = 0.5) -> Path:
    """Write the rows of a DuckDB ``select`` (after ``setseed(seed)``, so random() repeats) to ``path``.

    For types numpy cannot hold as such (DATE, TIME, TIMESTAMPTZ, INTERVAL): the file is what DuckDB,
    and so a user's pipeline, would write. The format follows the extension.
    """
    con = duckdb.connect()
    try:
        con.execute("set TimeZone = 'UTC'")
        con.execute("set threads = 1")  # so that setseed makes random() repeat
        con.execute(f"select setseed({seed})")
        con.execute(f"create table data as {select}")  # random() evaluated once, in one thread's order
        fmt = {".parquet": "parquet", ".csv": "csv", ".json": "json", ".jsonl": "json"}[path.suffix]
        con.execute(f"copy data to '{path}' (format {fmt})")
    finally:
        con.close()
    return path
