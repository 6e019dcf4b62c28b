"""Data drift: exact statistics over Parquet/CSV/JSON computed in DuckDB (docs/drift.md)."""
