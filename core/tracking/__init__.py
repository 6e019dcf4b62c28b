"""Tracking: metric ingestion, lineage, the runs filter, run queries, compare and export (docs/tracking.md, docs/runs.md).

``PUBLIC`` names the modules other capabilities and the TUI may import; the
rest is this capability's own (tests/test_import_directions.py keeps that).
"""

# run_keys: how a run's metric keys are shown, paged and counted (runs show and the TUI's runs screen).
PUBLIC = ("run_keys",)
