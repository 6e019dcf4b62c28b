"""Tracking: metric ingestion, lineage, the runs filter, run queries, compare and export (docs/tracking.md, docs/runs.md).

``PUBLIC`` names the modules other capabilities and the TUI may import; the
rest is this capability's own (tests/test_import_directions.py keeps that).
"""

# run_keys: how a run's metric keys are shown, paged and counted (runs show and the TUI's runs screen).
# records: a run's rows (created, finished, lineage merged), for jobs, which start and end runs, and drift.
# lineage: what a run used (git, inputs, GPUs), taken at submit and merged from the node.
# run_ingest: a chunk of a run's metric lines taken in exactly once (jobs hand over what each poll brought).
# runfilter: the runs filter language; pipelines read their gates' requirements with its parse_relation.
# metric_keys: summary_sql, what metrics.K.min/max/mean/last/count mean over a run's rows (pipelines' gates).
PUBLIC = ("run_keys", "records", "lineage", "run_ingest", "runfilter", "metric_keys")
