"""Model files on a node: uploaded, verified by sha256, committed once, and shipped before a replica starts.

The agent's side through its real RPCs (model_status, model_commit) with
good, damaged and hostile uploads; the controller's side through a real
controller and its local agent launching a job whose spec carries a
ServicePlan (built here with spec_from_plain, as core/deploy will build one).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from conftest import REPO, Fleet
from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.base.hello import PROTOCOL_VERSION
from mlfleet.core.base.protocol import Peer
from mlfleet.core.controller.client import connect


@pytest.fixture
def agent(fleet: Fleet):
    state = fleet.root / "agent-state"
    sock = fleet.root / "a.sock"
    proc = subprocess.Popen([sys.executable, "-m", "mlfleet", "agent", "serve", "--state-dir", str(state),
                             "--socket", str(sock), "--name", "models"], env=fleet.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fleet.wait_for(lambda: sock.exists(), what="the agent socket")
    yield state, sock
    proc.terminate()
    proc.wait(10)


async def _peer(sock: Path) -> Peer:
    reader, writer = await asyncio.open_unix_connection(str(sock))
    peer = Peer(reader, writer, name="agent")
    peer.start()
    await peer.request("hello", protocol=PROTOCOL_VERSION, role="controller")
    return peer


async def _ask(sock: Path, method: str, **params: Any) -> Any:
    peer = await _peer(sock)
    try:
        return await peer.request(method, **params)
    except MlfleetError as exc:
        return exc
    finally:
        await peer.close()


def _upload(incoming: str, data: bytes) -> None:
    """As the transports do: a temporary name, then a rename."""
    part = Path(incoming + ".part")
    part.write_bytes(data)
    os.replace(part, incoming)


async def test_a_good_upload_is_committed_once_into_its_folder(agent) -> None:
    state, sock = agent
    data = os.urandom(3 * 1024 * 1024 + 17)
    sha = hashlib.sha256(data).hexdigest()
    status = await _ask(sock, "model_status", sha256=sha)
    assert status["present"] is False
    assert status["incoming"] == str(state / "models" / ".incoming" / sha)
    _upload(status["incoming"], data)
    committed = await _ask(sock, "model_commit", sha256=sha, file_name="model.safetensors")
    target = state / "models" / sha / "model.safetensors"
    assert committed == {"path": str(target)}
    assert target.read_bytes() == data
    assert target.stat().st_mode & 0o077 == 0  # private to the agent's user
    assert not Path(status["incoming"]).exists()
    assert (await _ask(sock, "model_status", sha256=sha))["present"] is True
    assert await _ask(sock, "model_commit", sha256=sha, file_name="model.safetensors") == committed  # idempotent
    # The same bytes registered under a second name: committed without a second upload.
    assert (await _ask(sock, "model_status", sha256=sha, file_name="other.bin"))["present"] is False
    second = await _ask(sock, "model_commit", sha256=sha, file_name="other.bin")
    assert Path(second["path"]).read_bytes() == data
    assert sorted(p.name for p in (state / "models").iterdir()) == [".incoming", sha]  # no temporary folder left


async def test_a_damaged_upload_is_deleted_and_refused_with_a_sentence(agent) -> None:
    state, sock = agent
    data = b"weights" * 1000
    sha = hashlib.sha256(data).hexdigest()
    status = await _ask(sock, "model_status", sha256=sha)
    _upload(status["incoming"], data[:-1] + b"X")
    refused = await _ask(sock, "model_commit", sha256=sha, file_name="model.bin")
    assert isinstance(refused, MlfleetError)
    assert str(refused).startswith(f"model {sha[:12]} arrived damaged (its sha256 is ")
    assert str(refused).endswith("it was deleted: ship it again")
    assert not Path(status["incoming"]).exists() and not (state / "models" / sha).exists()
    never_sent = await _ask(sock, "model_commit", sha256=sha, file_name="model.bin")
    assert str(never_sent) == f"model {sha[:12]} was not uploaded to this host; ship it first"


HOSTILE_NAMES = {
    "../../escape": "holds a '/'",
    "a/b": "holds a '/'",
    "..": "holds '..'",
    "x..y": "holds '..'",
    ".hidden": "starts with '.'",
    "nul\0byte": "holds a NUL byte",
    "é" * 128: "bytes; 255 at most",
    "": "a model file needs a name",
}


async def test_hostile_names_and_ids_are_refused_and_nothing_is_written(agent) -> None:
    state, sock = agent
    data = b"model"
    sha = hashlib.sha256(data).hexdigest()
    status = await _ask(sock, "model_status", sha256=sha)
    _upload(status["incoming"], data)
    for name, words in HOSTILE_NAMES.items():
        refused = await _ask(sock, "model_commit", sha256=sha, file_name=name)
        assert isinstance(refused, MlfleetError), name
        assert words in str(refused), (name, str(refused))
    for bad_sha in ("../" + sha[3:], sha.upper(), sha[:63], "", "g" * 64):
        for method, extra in (("model_status", {}), ("model_commit", {"file_name": "m.bin"})):
            refused = await _ask(sock, method, sha256=bad_sha, **extra)
            assert isinstance(refused, MlfleetError) and "invalid model sha256" in str(refused), (method, bad_sha)
    assert sorted(p.name for p in (state / "models").iterdir()) == [".incoming"]
    assert Path(status["incoming"]).read_bytes() == data  # a refused name leaves the upload for a good one


# ------------------------------------------------------------ through a controller

@pytest.fixture
async def controller(fleet: Fleet) -> AsyncIterator[Any]:
    """A real controller (tests/replica_controller.py: the usual services and one RPC to queue a replica)."""
    fleet.home.log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = open(fleet.home.log_dir / "controller.log", "ab")  # its log goes to stderr, as `controller run`'s does
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "replica_controller.py")], env=fleet.env,
                            stdout=log, stderr=log, cwd=REPO)
    log.close()
    fleet.wait_for(lambda: fleet.home.controller_socket.exists(), timeout=60, what="the controller socket")
    client = await connect(fleet.home, autostart=False)
    try:
        yield client
    finally:
        await client.close()
        fleet.cli("controller", "stop")
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _replica(fleet: Fleet, name: str, sha: str, file_name: str) -> dict[str, Any]:
    workdir = fleet.root / "serve"
    workdir.mkdir(exist_ok=True)
    (workdir / "serve.py").write_text("import time\nprint('serving', flush=True)\ntime.sleep(600)\n")
    return {"name": name, "command": ["python", "serve.py"], "workdir": str(workdir),
            "service": {"deployment": "iris", "version": 1, "replica": name, "model_sha256": sha,
                        "model_file": file_name}}


async def _wait_job(fleet: Fleet, job_id: str, states: set[str], timeout: float = 90) -> dict[str, Any]:
    try:
        return await asyncio.to_thread(fleet.wait_state, job_id, states, timeout)
    except AssertionError as exc:  # what the controller said helps more than the timeout alone
        log = (fleet.home.log_dir / "controller.log").read_text(errors="replace")[-3000:]
        raise AssertionError(f"{exc}; job: {fleet.job(job_id)}; controller log: {log}") from None


async def test_a_replicas_model_is_shipped_to_its_host_before_it_starts(fleet: Fleet, controller) -> None:
    data = os.urandom(512 * 1024)
    sha = hashlib.sha256(data).hexdigest()
    store = fleet.home.model_store_dir / sha
    store.mkdir(parents=True)
    (store / "iris.pkl").write_bytes(data)
    # Two replicas of the same model at once: one upload between them, both start.
    ids = [(await controller.call("test_submit_replica", spec=_replica(fleet, f"iris-v1-{i}", sha, "iris.pkl")))["job_id"]
           for i in range(2)]
    for job_id in ids:
        await _wait_job(fleet, job_id, {"running"})
    shipped = fleet.home.local_agent_dir / "models" / sha / "iris.pkl"
    assert shipped.read_bytes() == data
    assert list((fleet.home.local_agent_dir / "models" / ".incoming").iterdir()) == []
    log = (fleet.home.log_dir / "controller.log").read_text()
    assert log.count(f"shipped model {sha[:12]}") == 1
    for job_id in ids:
        fleet.cli("cancel", job_id)


async def test_a_replica_whose_model_is_not_in_the_store_fails_to_start_with_a_sentence(fleet: Fleet, controller) -> None:
    sha = hashlib.sha256(b"never registered").hexdigest()
    job_id = (await controller.call("test_submit_replica", spec=_replica(fleet, "iris-v1-0", sha, "iris.pkl")))["job_id"]
    done = await _wait_job(fleet, job_id, {"failed"})
    expected = (f"model file {fleet.home.model_store_dir / sha / 'iris.pkl'} is not in the controller's model store, "
                "so replica iris-v1-0 of iris cannot start; register the model again")
    assert expected in done["reason"], done
    assert not (fleet.home.local_agent_dir / "models" / sha).exists()
    # The controller goes on serving: a replica of another model is queued at once.
    assert (await controller.call("test_submit_replica", spec={**_replica(fleet, "plain", sha, "iris.pkl"),
                                                                "service": None}))["job_id"]
