"""Deployments (docs/deployments.md)."""

PUBLIC = ("spec", "rollout", "serving_stats")
