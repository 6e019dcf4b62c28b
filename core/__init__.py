"""mlfleet's controller side, one folder per capability (docs/architecture.md)."""
