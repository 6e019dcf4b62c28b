"""Data drift: exact statistics over Parquet/CSV/JSON computed in DuckDB (docs/drift.md).

``PUBLIC`` names the modules other capabilities and the TUI may import; the
rest is this capability's own (tests/test_import_directions.py keeps that).
"""

# summary: the words of a drift report, one definition for the CLI and the TUI's drift screen.
# stored_check: a check the controller computes and stores itself (a pipeline's drift step, core/pipelines).
PUBLIC = ("summary", "stored_check")
