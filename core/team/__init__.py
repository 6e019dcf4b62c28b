"""The team capability: policy, roles, quotas and secrets (only secrets so far; docs/secrets.md)."""
