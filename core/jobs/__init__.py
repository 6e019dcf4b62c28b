"""Jobs: specs, code snapshots, idempotent submits and the scheduler that places them (docs/scheduler.md)."""
