"""Environments: per-job Python environments, resolved on the workstation and built on the node (docs/environments.md).

The controller's side lives here: resolution with uv for a node's
interpreter and platform (``resolve``), the environment's identity
(``identity``), the content-addressed wheelhouse the wheels are fetched
into (``wheelhouse``), and the preparation a launch waits for (``prepare``).
The node's side (building ``<state>/envs/<env_hash>``) is the agent's.

``PUBLIC`` names the modules other capabilities and the TUI may import; the
rest is this capability's own (tests/test_import_directions.py keeps that).
"""

# prepare: what a launch of a job with an environment waits for (jobs' launcher calls it).
# resolve: EnvironmentFailure, the one-sentence error a job fails with.
# identity: env_hash, the environment's identity (lineage, compare).
# records: a run's environment written to the store (jobs write it when a launch is prepared).
# warm: which hosts have a job's environment built (the dispatcher passes it to the scheduler).
PUBLIC = ("prepare", "identity", "records", "resolve", "warm")
