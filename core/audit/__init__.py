"""The audit trail: an append-only record of who did what, written by every capability (docs/store.md, the audit table)."""
