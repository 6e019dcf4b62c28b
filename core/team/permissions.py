"""Every controller RPC method's base permission: checked before its handler runs.

A method missing from the table is refused (a new RPC must say who may call
it; tests/test_team_roles.py keeps the table equal to the methods the
controller answers). Where the target decides more (whose job, which
project, a protected alias), the handler checks again with the finer
permission (ControllerContext.require, core/controller/service.py).
"""

from __future__ import annotations

from mlfleet.core.team.roles import ANY_PROJECT, Permission

P = Permission

METHOD_PERMISSIONS: dict[str, Permission] = {
    # the controller itself
    "hello": P.CONNECT, "whoami": P.CONNECT, "status": P.READ, "shutdown": P.SHUTDOWN,
    # jobs: the owner and project decide in the handlers
    "submit": P.SUBMIT, "jobs_list": P.READ, "job_show": P.READ, "job_wait": P.READ, "job_logs": P.READ,
    "job_cancel": P.CANCEL, "job_retry": P.RETRY, "job_set_priority": P.PRIORITISE,
    # code upload: part of a submit from a caller who is not the controller's user (core/jobs/code_upload.py)
    "code_has": P.SUBMIT, "code_upload_begin": P.SUBMIT, "code_upload_chunk": P.SUBMIT, "code_upload_end": P.SUBMIT,
    # sweeps
    "sweeps_list": P.READ, "sweep_show": P.READ, "sweep_cancel": P.CANCEL,
    # secrets: the names are listed to viewers, never the values
    "secret_set": P.SECRETS, "secret_remove": P.SECRETS, "secret_list": P.READ,
    # deployments: the deployment's project decides in the handlers
    "deploy_apply": P.DEPLOY, "deploy_scale": P.DEPLOY, "deploy_stop": P.DEPLOY, "deploy_rollback": P.DEPLOY,
    "deploy_list": P.READ, "deploy_show": P.READ, "deploy_history": P.READ, "deploy_endpoints": P.READ,
    "deploy_metrics": P.READ, "deploy_replica": P.READ,
    # audit: an export writes a file on the controller's machine
    "audit_list": P.READ, "audit_verify": P.READ, "audit_head": P.READ, "audit_export": P.SERVER_FILES,
    # drift: a profile's values are written by the client into a folder on the controller's machine
    "drift_save_report": P.RECORD, "drift_trigger": P.RECORD, "drift_list": P.READ, "drift_show": P.READ,
    "drift_profile_dir": P.SERVER_FILES, "drift_save_profile": P.SERVER_FILES, "drift_get_profile": P.READ,
    "drift_profiles": P.READ,
    # registry: the run's project (register) and the alias (protected or not) decide in the handlers
    "model_register": P.REGISTER_MODEL, "model_alias": P.MOVE_ALIAS, "models_list": P.READ, "model_show": P.READ,
    "model_versions": P.READ, "model_resolve": P.READ, "model_history": P.READ,
    # db query reads the store; file readers need SERVER_FILES, checked in the handler
    "db_query": P.READ,
    # runs: an export writes a file on the controller's machine
    "run_show": P.READ, "run_artifacts": P.READ, "run_artifact_read": P.READ, "runs_list": P.READ,
    "runs_compare": P.READ, "run_metrics": P.READ, "runs_export": P.SERVER_FILES,
    # pipelines: the pipeline's project (run) and the run's starter (cancel) decide in the handlers
    "pipeline_run": P.SUBMIT, "pipeline_cancel": P.CANCEL, "pipeline_wait": P.READ, "pipeline_list": P.READ,
    "pipeline_show": P.READ, "pipeline_why": P.READ, "pipeline_triggers": P.READ,
    # hosts
    "hosts_list": P.READ, "hosts_add": P.HOSTS, "hosts_remove": P.HOSTS, "hosts_drain": P.HOSTS,
    "host_key": P.HOSTS, "host_trust": P.HOSTS, "hosts_bootstrap": P.HOSTS, "hosts_stop_agent": P.HOSTS,
    "hosts_start_agent": P.HOSTS, "hosts_check": P.HOSTS,
}

# The handlers of these check the permission themselves, with the target's project and owner (their
# sentence names them: "cancel bob's job j42: that needs maintainer in vision"); the gate lets them through.
HANDLER_CHECKED: frozenset[str] = frozenset({
    "submit", "job_cancel", "job_retry", "job_set_priority", "sweep_cancel", "model_register", "model_alias",
    "deploy_apply", "deploy_scale", "deploy_stop", "deploy_rollback", "code_has", "code_upload_begin",
    "pipeline_run", "pipeline_cancel"})

# The gate of these counts a role in any project: reads (lists are not split by project), drift records and
# an upload's chunks and end (its begin was checked in its project; the submit that names it is checked again).
ANYWHERE: frozenset[str] = frozenset(
    {m for m, p in METHOD_PERMISSIONS.items() if p is P.READ} | {"drift_save_report", "drift_trigger"}
    | {"code_upload_chunk", "code_upload_end"})


def gate_project(method: str) -> str | None:
    """The project the gate before ``method``'s handler asks about: any (ANY_PROJECT) or everywhere (None)."""
    return ANY_PROJECT if method in ANYWHERE else None
