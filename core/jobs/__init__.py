"""Jobs: specs, code snapshots, idempotent submits, the scheduler, and the controller's queue and dispatch (docs/scheduler.md).

``PUBLIC`` names the modules other capabilities and the TUI may import; the
rest is this capability's own (tests/test_import_directions.py keeps that).
"""

# spec: a job spec read from YAML (drift reads a job's inputs from it; the TUI submits one).
# submit_key: the idempotency key every client sends with a submit.
# overrides: --set PATH=VALUE applied to a spec's data (sweeps set each point the same way).
# group: many jobs submitted in one transaction, held back by a limit, cancelled together (sweeps).
# service: the jobs service, which a group's submit, holds and cancels act on.
# log_output: how a job's output is printed (deployments print a replica's the same way).
# params: the {params.KEY} placeholder and how a value reads as text (pipelines fill their params into steps).
# snapshot: a workdir as a content-addressed archive (pipelines hash a step's code without its data files).
# policy_limits: deployments refuse pinned hosts that defy the residency of the run their model came from.
# code_send: a client that is not the controller's OS user packs and sends its own code (every submitting client).
# code_upload: the controller's side of that; deployments refuse a workdir from another user with it.
PUBLIC = ("spec", "submit_key", "overrides", "group", "service", "log_output", "params", "snapshot", "policy_limits",
          "code_send", "code_upload")
