"""What a launched run's process is given: its environment, and for a service its port and model file.

Pure but for reading the node's environment and model store; kept apart from
the supervisor (which decides *when* to start a run) so each stays small.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

import msgspec

from mlfleet.core.base.errors import NotFoundError, UnavailableError, UsageError
from mlfleet.core.base.private import USER_UMASK_ENV
from mlfleet.core.base.models import LaunchRequest, ServicePlan

from mlfleet.agents.artifacts import ROOTS_ENV, allowed_roots
from mlfleet.agents.rundir import RunDir


def job_environment(request: LaunchRequest, run: RunDir) -> dict[str, str]:
    """The agent's environment, then the spec's, then what mlfleet promises every job.

    The agent's environment is a login's: the node's SSH session for a
    remote agent, :func:`mlfleet.core.base.spawn.local_agent_environment` for the
    local one; no ``MLFLEET_*`` variable but the ones set here.

    The agent's interpreter comes first on PATH so that ``python`` in a job
    is one where ``from mlfleet import track`` works; a spec that sets PATH
    itself keeps its own.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLEET_")}  # only what is set below
    if USER_UMASK_ENV in os.environ:  # read by the runner to give the job the user's umask (core/base/private.py)
        env[USER_UMASK_ENV] = os.environ[USER_UMASK_ENV]
    env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", os.defpath)])
    env.update(request.env)
    env["MLFLEET_RUN_ID"] = request.run_id
    env["MLFLEET_JOB_ID"] = request.job_id
    env["MLFLEET_METRICS_FILE"] = str(run.stream_path("metrics"))
    env[ROOTS_ENV] = os.pathsep.join(allowed_roots(run.root, request.workdir, request.artifact_roots))
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # so indices mean what NVML (and nvidia-smi) call them
    env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in request.gpu_indices)
    env["PYTHONUNBUFFERED"] = env.get("PYTHONUNBUFFERED", "1")
    return env


_SHA256 = re.compile(r"[0-9a-f]{64}")


def model_path(state_dir: Path, plan: ServicePlan) -> str:
    """Where a replica's model file lies in the node's model store ("" for a server without one).

    The file is shipped before the launch (core/jobs/launch.py): a server
    started without it would only crash and restart, so its absence is
    refused here like a snapshot's.
    """
    if not plan.model_sha256:
        return ""
    name = plan.model_file or ""
    if not _SHA256.fullmatch(plan.model_sha256):
        raise UsageError(f"model sha256 {plan.model_sha256[:80]!r} is not 64 hex digits")
    if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name or len(name) > 255:
        raise UsageError(f"model file name {name[:80]!r} must be a plain file name")
    path = state_dir / "models" / plan.model_sha256 / name
    if not path.is_file():
        raise NotFoundError(f"model {plan.model_sha256[:12]} ({name}) is not on this host; ship it first")
    return str(path)


def free_port(taken: set[int]) -> int:
    """A TCP port free on 127.0.0.1 now (bind port 0, close), none of ``taken`` (other replicas' here).

    It may be taken by someone else before the server binds it; the server
    then fails, is restarted on the same port, and its probes say so.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in taken:
            return port
    raise UnavailableError("no free TCP port on 127.0.0.1 for the server")


def service_request(request: LaunchRequest, port: int, model: str) -> LaunchRequest:
    """The request with ``{port}`` and ``{model_path}`` put into its argv items and env values.

    Plain replacement, not ``str.format``: an argv may hold JSON or other braces of its own.
    """
    def fill(text: str) -> str:
        return text.replace("{port}", str(port)).replace("{model_path}", model)

    return msgspec.structs.replace(request, argv=[fill(a) for a in request.argv],
                                   env={k: fill(v) for k, v in request.env.items()})


def service_environment(plan: ServicePlan, run: RunDir, port: int, model: str) -> dict[str, str]:
    """What mlfleet promises a replica's server besides a job's variables (DEPLOY.md "Agent side")."""
    return {"MLFLEET_PORT": str(port), "MLFLEET_MODEL_PATH": model,
            "MLFLEET_CAPTURE_FILE": str(run.file("capture.jsonl")), "MLFLEET_DEPLOYMENT": plan.deployment,
            "MLFLEET_MODEL_VERSION": str(plan.version), "MLFLEET_CAPTURE_MAX_SIZE": str(plan.capture_max_size)}
