"""Jobs: specs, code snapshots, idempotent submits, the scheduler, and the controller's queue and dispatch (docs/scheduler.md).

``PUBLIC`` names the modules other capabilities and the TUI may import; the
rest is this capability's own (tests/test_import_directions.py keeps that).
"""

# spec: a job spec read from YAML (drift reads a job's inputs from it; the TUI submits one).
# submit_key: the idempotency key every client sends with a submit.
PUBLIC = ("spec", "submit_key")
