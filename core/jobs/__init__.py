"""Jobs: specs, code snapshots, idempotent submits, the scheduler, and the controller's queue and dispatch (docs/scheduler.md)."""
