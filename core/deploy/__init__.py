"""Deployments: a registered model served by N supervised replicas, rolled out and back without dropping requests (issue 16).

Each replica is a job whose spec carries a ServicePlan, so placement,
dispatch, code shipping, environments, cancel and logs are the jobs
capability's; this capability decides how many replicas of which version
should exist (a pure planner) and reads the servers' metrics.

``PUBLIC`` names the modules other capabilities and the TUI may import; the
rest is this capability's own (tests/test_import_directions.py keeps that).
"""

# spec: a deployment spec read from YAML (the TUI and the CLI validate one before sending it).
# rollout: the pure planner (views in, one step out): the TUI shows a rollout's phase and reasons from it.
# serving_stats: request rates, error rates and latency quantiles from scrapes (TUI panels, reports).
PUBLIC = ("spec", "rollout", "serving_stats")
