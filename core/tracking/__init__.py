"""Tracking: metric ingestion, lineage, the runs filter, run queries, compare and export (docs/tracking.md, docs/runs.md)."""
