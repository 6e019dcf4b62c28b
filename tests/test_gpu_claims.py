"""Many controllers, one node: the node's GPU claims keep two jobs off one GPU, whoever placed them.

A team of ten sharing twenty GPU boxes runs ten controllers, each believing
it owns the GPUs. Between one controller's launch and its job showing in
NVML, another sees the GPU free and places there too. The agent keeps the
books: a launch onto GPUs another live run holds is refused with a sentence,
and the refused controller places the job again, no attempt spent.
Simulated GPUs show no processes in NVML, so the claims are the only
protection here: exactly the point.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import Fleet
from mlfleet.core.base.errors import RemoteError
from mlfleet.core.base.protocol import open_unix_peer

SLEEPER = "import os, time; print('on GPU', os.environ['CUDA_VISIBLE_DEVICES'], flush=True); time.sleep({s})"


def _start_agent(fleet: Fleet, gpus: Path) -> tuple[subprocess.Popen, Path]:
    state, sock = fleet.root / "node-state", fleet.root / "n.sock"
    proc = subprocess.Popen([sys.executable, "-m", "mlfleet", "agent", "serve", "--state-dir", str(state),
                             "--socket", str(sock), "--name", "shared", "--simulate-gpus", str(gpus)],
                            env=fleet.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fleet.wait_for(lambda: sock.exists(), what="the agent socket")
    return proc, sock


def _request(run_id: str, gpus: list[int], controller: str, seconds: float = 30, gpu_memory: int | None = None,
             workdir: Path = Path("/tmp")) -> dict:
    return {"run_id": run_id, "job_id": run_id.rsplit("-", 1)[0], "argv": [sys.executable, "-c", SLEEPER.format(s=seconds)],
            "workdir": str(workdir), "env": {}, "gpu_indices": gpus, "gpu_memory": gpu_memory,
            "controller": controller, "owner": controller.split("@")[0]}


async def _launch(sock: Path, request: dict) -> dict | RemoteError:
    peer = await open_unix_peer(str(sock), "agent")
    try:
        await peer.hello("controller")
        return await peer.request("launch", request=request)
    except RemoteError as exc:
        return exc
    finally:
        await peer.close()


async def _claims(sock: Path) -> list[dict]:
    peer = await open_unix_peer(str(sock), "agent")
    try:
        await peer.hello("controller")
        await asyncio.sleep(1.5)  # a sample taken after the launches
        return (await peer.request("telemetry"))[-1]["gpu_claims"]
    finally:
        await peer.close()


async def test_launches_racing_for_one_gpu_from_many_controllers_start_exactly_one(fleet: Fleet) -> None:
    gpus = fleet.root / "gpus.yaml"
    gpus.write_text("gpus:\n  - {name: NVIDIA H100 80GB HBM3, count: 2, memory_total: 80GiB}\n")
    proc, sock = _start_agent(fleet, gpus)
    try:
        # Eight controllers ask for GPU 0 at the same instant: the node starts one run, refuses seven.
        answers = await asyncio.gather(*(_launch(sock, _request(f"j{n:08x}-1", [0], f"user{n}@box:/home/{n}"))
                                         for n in range(8)))
        won = [a for a in answers if isinstance(a, dict)]
        refused = [a for a in answers if isinstance(a, RemoteError)]
        assert len(won) == 1 and len(refused) == 7, answers
        winner = won[0]["run_id"]
        n = int(winner[1:9], 16)
        assert all(e.kind == "GpuClaimedError" for e in refused)
        assert all(f"GPU 0 is held by run {winner} (user user{n}, controller user{n}@box:/home/{n})" in str(e)
                   for e in refused), [str(e) for e in refused]
        runs = fleet.root / "node-state" / "runs"
        assert sorted(p.name for p in runs.iterdir()) == [winner]  # a refused launch leaves nothing behind

        # The same run asked again (a retried launch) is never refused by its own claim; GPU 1 is free.
        again = await _launch(sock, _request(winner, [0], f"user{n}@box:/home/{n}"))
        assert isinstance(again, dict) and again["run_id"] == winner, again
        other = await _launch(sock, _request("jbbbbbbbb-1", [1], "bob@box:/b"))
        assert isinstance(other, dict), other
        # Another controller's run under the same run id is not this launch's run.
        twin = await _launch(sock, _request(winner, [1], "mallory@box:/m"))
        assert isinstance(twin, RemoteError) and "already another controller's run" in str(twin), twin
        claims = await _claims(sock)
        assert [(c["index"], c["run_id"]) for c in claims] == [(0, winner), (1, "jbbbbbbbb-1")], claims
        assert claims[0]["controller"] == f"user{n}@box:/home/{n}" and claims[0]["gpu_memory"] is None
    finally:
        proc.terminate()
        proc.wait(10)

    # A restarted agent has the claims from the run folders: GPU 0 is still refused while its run lives.
    proc, sock = _start_agent(fleet, gpus)
    try:
        late = await _launch(sock, _request("jcccccccc-1", [0, 1], "carol@box:/c"))
        assert isinstance(late, RemoteError) and late.kind == "GpuClaimedError", late
        assert f"GPU 0 is held by run {winner}" in str(late) and "GPU 1 is held by run jbbbbbbbb-1" in str(late)
    finally:
        proc.terminate()
        proc.wait(10)


async def test_memory_shares_fit_beside_each_other_and_never_beside_a_whole_gpu_claim(fleet: Fleet) -> None:
    gpus = fleet.root / "gpus.yaml"
    gpus.write_text("gpus:\n  - {name: NVIDIA H100 80GB HBM3, count: 2, memory_total: 80GiB}\n")
    proc, sock = _start_agent(fleet, gpus)
    gib = 2**30
    try:
        await asyncio.sleep(1.2)  # the agent has sampled its GPUs' memory
        first = await _launch(sock, _request("jshare001-1", [0], "a@x:/a", gpu_memory=30 * gib))
        second = await _launch(sock, _request("jshare002-1", [0], "b@x:/b", gpu_memory=30 * gib))
        assert isinstance(first, dict) and isinstance(second, dict), (first, second)
        third = await _launch(sock, _request("jshare003-1", [0], "c@x:/c", gpu_memory=30 * gib))
        assert isinstance(third, RemoteError) and "GPU 0 has 20.0 GiB of its 80.0 GiB left unreserved" in str(third)
        whole = await _launch(sock, _request("jwhole001-1", [0], "d@x:/d"))
        assert isinstance(whole, RemoteError) and "GPU 0 is held by run jshare001-1" in str(whole), whole
        exclusive = await _launch(sock, _request("jwhole002-1", [1], "d@x:/d"))
        assert isinstance(exclusive, dict)
        share = await _launch(sock, _request("jshare004-1", [1], "e@x:/e", gpu_memory=gib))
        assert isinstance(share, RemoteError) and "GPU 1 is held whole by run jwhole002-1" in str(share), share
    finally:
        proc.terminate()
        proc.wait(10)


def _second_fleet(root: Path) -> Fleet:
    other = Fleet(root.with_name(root.name + "-b"))
    other.root.mkdir()
    return other


class _TwoControllers:
    """Alice's and Bob's controllers (two homes) with one SSH node between them: the same sshd, the same state dir,
    so one agent answers both."""

    def __init__(self, fleet: Fleet, gpu_count: int) -> None:
        from sshd import SshServer, keygen

        key = keygen(fleet.root / "user_key")
        self.server = SshServer(fleet.root / "sshd", key).start()
        self.alice, self.bob = fleet, _second_fleet(fleet.root)
        try:
            self._add_node(key, gpu_count)
        except BaseException:
            self.close()
            raise

    def _add_node(self, key: Path, gpu_count: int) -> None:
        self.state, gpus = self.alice.root / "shared-state", self.alice.root / "gpus.yaml"
        gpus.write_text(f"gpus:\n  - {{name: NVIDIA H100 80GB HBM3, count: {gpu_count}, memory_total: 80GiB}}\n")
        for controller in self.both:
            controller.cli("hosts", "add", "node", "--address", "127.0.0.1", "--port", str(self.server.port),
                           "--user", self.server.user, "--identity", str(key),
                           "--agent-command", f"{sys.executable} -m mlfleet", "--state-dir", str(self.state),
                           "--simulate-gpus", str(gpus), check=True)
            controller.cli("hosts", "trust", "node", "--yes", check=True)
        for controller in self.both:
            controller.wait_for(lambda c=controller: len((self.node(c)["telemetry"] or {}).get("gpus", [])) == gpu_count,
                                timeout=60, what="the shared node up")

    @property
    def both(self) -> tuple[Fleet, Fleet]:
        return self.alice, self.bob

    @staticmethod
    def node(controller: Fleet) -> dict:
        return next(h for h in controller.cli_json("hosts", "list") if h["name"] == "node")

    def close(self) -> None:
        import shutil

        self.bob.kill_everything()
        self.server.stop()
        shutil.rmtree(self.bob.root, ignore_errors=True)
        shutil.rmtree(self.bob.root.with_name(self.bob.root.name + "-files"), ignore_errors=True)


def _sleeper_spec(seconds: float) -> str:
    return ("name: sleeper\nresources: {gpus: 1}\nconstraints: {hosts: [node]}\n"
            f"command: [python, -c, \"{SLEEPER.format(s=seconds)}\"]\n")


@pytest.mark.timeout(400)
def test_two_controllers_sharing_one_agent_never_put_two_jobs_on_one_gpu(fleet: Fleet) -> None:
    two = _TwoControllers(fleet, gpu_count=2)
    alice, bob, state = two.alice, two.bob, two.state
    try:
        jobs: dict[str, list[str]] = {"alice": [], "bob": []}
        for name, controller in (("alice", alice), ("bob", bob)):  # 2 x 2 GPUs of jobs from each controller
            controller.cli("hosts", "drain", "node", check=True)  # queued first, so both place at the same moment
            path = controller.write_spec("sleeper", _sleeper_spec(3))
            jobs[name] += [controller.cli("submit", str(path), check=True).out.strip() for _ in range(4)]
        opening = [subprocess.Popen([str(Path(sys.executable).with_name("mlfleet")), "hosts", "undrain", "node"],
                                    env=c.env, stdout=subprocess.DEVNULL) for c in (alice, bob)]
        assert [p.wait(60) for p in opening] == [0, 0]
        for name, controller in (("alice", alice), ("bob", bob)):
            for job_id in jobs[name]:
                job = controller.wait_state(job_id, {"succeeded", "failed", "cancelled", "lost"}, timeout=180)
                assert job["state"] == "succeeded", job

        # Every run that started on the node, from both stores, with its GPU and its time there.
        spans = []
        refused = 0
        for name, controller in (("alice", alice), ("bob", bob)):
            rows = controller.cli_json("db", "query", "select r.run_id, r.job_id, r.gpus, r.state, r.end_reason, "
                                       "j.max_attempts from runs r join jobs j using (job_id)")["rows"]
            for job_id in jobs[name]:  # one run each, and every refusal gave its attempt back (retries: 0)
                mine = [r for r in rows if r[1] == job_id]
                ran = [r for r in mine if r[3] != "refused"]
                assert len(ran) == 1 and ran[0][5] == 1 + len(mine) - len(ran), mine
            for run_id, _job, run_gpus, run_state, end_reason, _max in rows:
                if run_state == "refused":
                    refused += 1
                    assert end_reason.startswith("refused: GPU") and "is held by run" in end_reason, end_reason
                    continue
                assert run_state == "succeeded", (run_id, run_state, end_reason)
                folder = state / "runs" / run_id
                started = json.loads((folder / "started.json").read_text())["started_at"]
                ended = json.loads((folder / "exit.json").read_text())["finished_at"]
                launch = json.loads((folder / "launch.json").read_text())
                assert launch["env"]["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, run_gpus))
                spans.append((run_gpus[0], started, ended, run_id))
        assert len(spans) == 8
        for gpu, start, end, run_id in spans:
            for gpu2, start2, end2, run_id2 in spans:
                if run_id != run_id2 and gpu == gpu2:
                    assert end <= start2 or end2 <= start, f"{run_id} and {run_id2} overlapped on GPU {gpu}"
        assert refused, "the two controllers never raced: nothing here tested the node's claims"
        actions = [e["action"] for c in (alice, bob) for e in c.cli_json("audit", "list")]
        assert actions.count("run.refused") == refused  # every refusal is audited
        why = [w for name, c in (("alice", alice), ("bob", bob)) for j in jobs[name]
               if (w := c.cli_json("jobs", "why", j))["refused"]]
        assert why and all(w["refused"][0]["reason"].startswith("refused: GPU") for w in why), why
        print(f"{refused} launches were refused by the node's claims")
    finally:
        two.close()


@pytest.mark.timeout(300)
def test_a_gpu_another_controllers_run_holds_is_in_use_to_this_one(fleet: Fleet) -> None:
    two = _TwoControllers(fleet, gpu_count=1)
    alice, bob = two.alice, two.bob
    try:
        first = alice.cli("submit", str(alice.write_spec("sleeper", _sleeper_spec(12))), check=True).out.strip()
        held = alice.wait_state(first, {"running"}, timeout=60)
        bob.wait_for(lambda: [c["run_id"] for c in two.node(bob)["telemetry"]["gpu_claims"]] == [held["run_id"]],
                     what="Alice's claim in Bob's telemetry")
        second = bob.cli("submit", str(bob.write_spec("sleeper", _sleeper_spec(1))), check=True).out.strip()
        why = bob.wait_for(lambda: "GPU 0 held by" in (out := bob.cli("jobs", "why", second).out) and out,
                           what="Bob's job to wait for the GPU Alice's run holds")
        assert "pending" in why and bob.job(second)["state"] == "pending", why
        assert alice.job(first)["state"] == "running"  # still: Bob waits for it, he does not try the node and fail
        done = bob.wait_state(second, {"succeeded", "failed"}, timeout=90)
        assert done["state"] == "succeeded" and alice.job(first)["state"] == "succeeded"
        runs = bob.cli_json("db", "query", f"select state from runs where job_id = '{second}'")["rows"]
        assert runs == [["succeeded"]]  # placed once, after Alice's run: never refused
    finally:
        two.close()
