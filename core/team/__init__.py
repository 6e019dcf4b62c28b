"""The team capability: policy, roles, quotas and secrets (docs/team.md, docs/secrets.md).

``PUBLIC`` names the modules other capabilities and the TUI may import; the
rest is this capability's own (tests/test_import_directions.py keeps that).
"""

# secret_store: jobs check a spec's secret references at submit and look their values up at launch.
# policy, quotas, residency: the scheduler's caps and regions come from the team policy (core/jobs/policy_limits.py).
# roles: the handlers that check the target (whose job, which project) name the Permission they ask for.
PUBLIC = ("secret_store", "policy", "quotas", "residency", "roles")
