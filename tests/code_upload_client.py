"""A client run as another OS user (tests/test_code_upload.py): what ``mlfleet submit`` does, on another's socket.

Why not the CLI itself: ``mlfleet`` talks only to its own user's controller
(a socket of another user is refused, core/base/private.py), and the team
socket and ``--controller ssh://`` that reach a shared one are built
elsewhere. This script opens the controller's socket directly (the test
opened it to this user, standing in for the team socket) and then runs the
very functions the CLI's submit runs: ``with_code`` and ``submit_with_retry``.

Each command prints one JSON object; every RPC method the client called is
counted in ``calls``.

    story SOCKET WORKDIR MARKER        make WORKDIR (0700, a git repo); submit its job.yaml as an older client
                                       would (no code), then twice as this one (keys k-first, k-second), then
                                       k-first again, then sweep.yaml; each waits for its jobs and reads stdout
    submit-code SOCKET WORKDIR SHA256  a submit that names code SHA256 (someone else's)
    chunk SOCKET UPLOAD                add bytes to upload UPLOAD (someone else's)
    deploy-apply SOCKET WORKDIR        apply a deployment whose replicas the controller would pack from WORKDIR
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.base.models import TERMINAL_STATES, to_plain
from mlfleet.core.base.paths import Home
from mlfleet.core.base.protocol import open_unix_peer
from mlfleet.core.controller.client import ControllerClient, submit_with_retry
from mlfleet.core.jobs.code_send import with_code
from mlfleet.core.jobs.spec import load_job_spec

calls: collections.Counter[str] = collections.Counter()


async def _open(socket: str) -> ControllerClient:
    peer = await open_unix_peer(socket, "the controller")
    await peer.hello("client")
    client = ControllerClient(peer, Home.from_env())
    call = client.call

    async def counted(method: str, request_timeout: float | None = 60.0, **params: Any) -> Any:
        calls[method] += 1
        return await call(method, request_timeout=request_timeout, **params)

    client.call = counted  # type: ignore[method-assign]
    return client


def _make_workdir(workdir: Path, marker: str) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o700)
    (workdir / "train.py").write_text(f"print({marker!r})\n")
    (workdir / "job.yaml").write_text("name: alices-job\ncommand: [python, train.py]\n")
    (workdir / "sweep.yaml").write_text("name: alices-sweep\ncommand: [python, train.py]\n"
                                        "sweep:\n  grid:\n    params.lr: [0.1, 0.01]\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(workdir)]
    subprocess.run(["git", "init", "-q", str(workdir)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "one"], check=True)


async def _submit_once(socket: str, workdir: Path, key: str, spec_file: str = "job.yaml") -> dict[str, Any]:
    before = collections.Counter(calls)
    spec = load_job_spec(workdir / spec_file)
    client = await _open(socket)
    params = await with_code(client, {"spec": to_plain(spec), "spec_path": str(workdir / spec_file), "key": key})
    answer, used = await submit_with_retry(client, params, retry_for=5, resubmit="(test)",
                                           reopen=lambda: _open(socket))
    jobs = []
    for job_id in answer.get("jobs") or [answer["job_id"]]:  # a sweep's children, or the one job
        job = {"state": "pending"}
        while job["state"] not in TERMINAL_STATES:
            job = await used.call("job_wait", request_timeout=90, job=job_id, timeout=60)
        job["stdout"] = (await used.call("job_logs", job=job_id))["data"]
        jobs.append(job)
    return {"answer": answer, "job": jobs[0], "jobs": jobs, "stdout": jobs[0]["stdout"], "sent": params.get("code"),
            "calls": dict(collections.Counter(calls) - before)}


async def story(socket: str, workdir: Path, marker: str) -> dict[str, Any]:
    """Make the workdir (it exists only here), then: an older client's submit, two submits, a retry with a key."""
    _make_workdir(workdir, marker)
    try:
        bare: Any = await submit_bare(socket, workdir)
    except MlfleetError as exc:
        bare = {"error": str(exc), "kind": getattr(exc, "kind", type(exc).__name__)}
    return {"bare": bare, "first": await _submit_once(socket, workdir, "k-first"),
            "second": await _submit_once(socket, workdir, "k-second"),
            "again": await _submit_once(socket, workdir, "k-first"),
            "sweep": await _submit_once(socket, workdir, "k-sweep", "sweep.yaml")}


async def submit_bare(socket: str, workdir: Path) -> dict[str, Any]:
    client = await _open(socket)
    spec = load_job_spec(workdir / "job.yaml")
    return await client.call("submit", spec=to_plain(spec))


async def submit_code(socket: str, workdir: Path, sha256: str) -> dict[str, Any]:
    client = await _open(socket)
    spec = load_job_spec(workdir / "job.yaml")
    return await client.call("submit", spec=to_plain(spec), code={"sha256": sha256})


async def chunk(socket: str, upload: str) -> dict[str, Any]:
    client = await _open(socket)
    return await client.call("code_upload_chunk", upload=upload, offset=0, data=b"alice was here")


async def deploy_apply(socket: str, workdir: Path) -> dict[str, Any]:
    client = await _open(socket)
    return await client.call("deploy_apply", spec={"name": "alices-serving", "model": "m:1", "workdir": str(workdir),
                                                   "command": ["python", "server.py", "--port", "{port}"]})


async def main(argv: list[str]) -> dict[str, Any]:
    command, socket, *rest = argv
    if command == "story":
        return await story(socket, Path(rest[0]), rest[1])
    if command == "submit-bare":
        return await submit_bare(socket, Path(rest[0]))
    if command == "submit-code":
        return await submit_code(socket, Path(rest[0]), rest[1])
    if command == "deploy-apply":
        return await deploy_apply(socket, Path(rest[0]))
    if command == "chunk":
        return await chunk(socket, rest[0])
    raise SystemExit(f"unknown command {command}")


if __name__ == "__main__":
    try:
        result: dict[str, Any] = {"ok": asyncio.run(main(sys.argv[1:]))}
    except MlfleetError as exc:
        result = {"error": str(exc), "kind": getattr(exc, "kind", type(exc).__name__)}
    caps = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("CapEff:"))
    result.update(calls=dict(calls), uids=list(os.getresuid()), cap_eff=caps)
    print(json.dumps(result))
