"""The audit trail: who did what to which job, host or run, as the controller recorded it (mlfleet audit list)."""
