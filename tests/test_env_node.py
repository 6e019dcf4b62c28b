"""What a node reports for environments (interpreters, platform) and a job launched inside one, through a real agent."""

from __future__ import annotations

import asyncio
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from conftest import Fleet
from envwheels import make_wheel, pinned, plan_for, ship
from mlfleet.agents.envs.probe import glibc_version, interpreters, search_folders, uv_platform
from mlfleet.core.base.models import LaunchRequest
from mlfleet.core.base.protocol import open_unix_peer

VERSION = platform.python_version()


# ------------------------------------------------------------------ probe

def test_the_probe_finds_the_test_venvs_python_with_its_full_version() -> None:
    found = interpreters([Path(sys.executable).parent])
    mine = [p for p in found if Path(p.path).parent == Path(sys.executable).parent]
    assert mine and mine[0].version == VERSION and mine[0].implementation == sys.implementation.name
    assert len(mine) == 1  # python3 and python3.11 in one venv are one interpreter


def test_broken_and_hung_shims_are_skipped_within_the_timeout(tmp_path: Path) -> None:
    shims = tmp_path / "shims"
    shims.mkdir()
    for name, body in (("python3.98", "echo 'pyenv: python3.98: command not found' >&2; exit 127"),
                       ("python3.97", "sleep 30"), ("python3.96", "echo not json")):
        (shims / name).write_text(f"#!/bin/sh\n{body}\n")
        (shims / name).chmod(0o755)
    (shims / "python3.95").mkdir()  # a folder with the right name is no interpreter
    real = tmp_path / "real"
    real.mkdir()
    (real / "python3").symlink_to(sys.executable)
    started = time.monotonic()
    # 3 s each: a real Python's start on a loaded machine (xdist workers share the cores) can take over 1 s.
    found = interpreters([shims, real], timeout=3.0)
    assert time.monotonic() - started < 20  # not the shim's 30 s
    assert [p.version for p in found] == [VERSION]


def test_the_search_goes_through_path_first_then_the_usual_folders_newest_pyenv_first(tmp_path: Path) -> None:
    for version in ("3.9.18", "3.12.1", "3.10.13"):
        (tmp_path / ".pyenv" / "versions" / version / "bin").mkdir(parents=True)
    folders = search_folders("/opt/a:/opt/b:/usr/bin", home=tmp_path)
    assert folders[:3] == [Path("/opt/a"), Path("/opt/b"), Path("/usr/bin")]
    assert folders.count(Path("/usr/bin")) == 1
    pyenv = [f.parent.name for f in folders if ".pyenv" in f.parts]
    assert pyenv == ["3.12.1", "3.10.13", "3.9.18"]


@pytest.mark.parametrize("machine,glibc,expected", [
    ("x86_64", (2, 36), "x86_64-manylinux_2_36"),
    ("x86_64", (2, 29), "x86_64-manylinux_2_28"),  # not in uv's list: the next lower one
    ("aarch64", (2, 45), "aarch64-manylinux_2_40"),
    ("x86_64", (2, 17), "x86_64-manylinux_2_17"),
    ("x86_64", (2, 16), None),  # older than any manylinux uv knows: the pip fallback's business
    ("riscv64", (2, 36), None),
    ("x86_64", None, None),  # musl
])
def test_the_platform_is_the_newest_uv_name_the_glibc_allows(machine: str, glibc, expected) -> None:
    assert uv_platform(machine, glibc) == expected


def test_glibc_comes_from_the_c_library_itself() -> None:
    out = subprocess.run(["ldd", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    major, minor = glibc_version()  # type: ignore[misc]
    assert out.rstrip().endswith(f"{major}.{minor}")


# ------------------------------------------------------------ through an agent

@pytest.fixture
def agent(fleet: Fleet):
    state = fleet.root / "agent-state"
    sock = fleet.root / "a.sock"
    proc = subprocess.Popen([sys.executable, "-m", "mlfleet", "agent", "serve", "--state-dir", str(state),
                             "--socket", str(sock), "--name", "envs"],
                            env={**fleet.env, "UV_INDEX_URL": "http://127.0.0.1:9/simple",
                                 "PIP_INDEX_URL": "http://127.0.0.1:9/simple"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    fleet.wait_for(lambda: sock.exists(), what="the agent socket")
    yield state, sock
    proc.terminate()
    proc.wait(10)


async def _finish(peer, run_id: str, timeout: float = 60) -> tuple[dict, list[dict]]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = (await peer.request("status", run_ids=[run_id]))[0]
        seen.append(status)
        if status["state"] == "exited":
            return status, seen
        await asyncio.sleep(0.05)
    raise AssertionError(f"{run_id} did not finish: {seen[-1]}")


async def _stdout(peer, run_id: str) -> str:
    return (await peer.request("read", run_id=run_id, stream="stdout", offset=0))["data"]


async def test_a_job_with_an_environment_is_preparing_then_runs_pythons_from_it(agent, tmp_path: Path) -> None:
    state, sock = agent
    lib = make_wheel(tmp_path, "greet-lib", "2.0", {"greet_lib.py": "WORD = 'hi'\n"})
    ship(state, lib)
    plan = plan_for([pinned(lib, "greet-lib", "2.0")], sys.executable, VERSION, setup=["sleep 1"])
    argv = ["python", "-c", "import os, sys, greet_lib; from mlfleet import track; track.log({'loss': 0.5}, step=1); "
                            "print('job', sys.prefix, os.environ['VIRTUAL_ENV'], greet_lib.WORD)"]

    def launch(run_id: str, environment) -> dict:
        return msgspec.to_builtins(LaunchRequest(run_id=run_id, job_id="j1", argv=argv, workdir=str(tmp_path), env={},
                                                 environment=environment))

    peer = await open_unix_peer(str(sock), "agent")
    try:
        await peer.hello("test")
        facts = await peer.request("env_probe")
        assert facts["uv"] is True and facts["platform"] == uv_platform(platform.machine(), glibc_version())
        assert any(p["version"] == VERSION for p in facts["interpreters"])
        assert (await peer.request("env_ready", env_hashes=[plan.env_hash])) == {plan.env_hash: False}

        await peer.request("launch", request=launch("env-1", plan))
        status, seen = await _finish(peer, "env-1")
        assert status["reason"] == "exited" and status["exit_code"] == 0, status
        preparing = [s for s in seen if s["state"] == "starting" and s.get("preparing_since")]
        assert preparing and preparing[0]["preparing_since"] <= time.time()
        out = await _stdout(peer, "env-1")
        root = state / "envs" / plan.env_hash
        assert f"job {root} {root} hi" in out, out
        assert "[mlfleet env] building environment" in out and "[mlfleet env] setup 1/1: sleep 1" in out
        assert (await peer.request("env_ready", env_hashes=[plan.env_hash])) == {plan.env_hash: True}
        metrics = await peer.request("read", run_id="env-1", stream="metrics", offset=0)
        assert '"loss": 0.5' in metrics["data"] or '"loss":0.5' in metrics["data"], metrics  # track works inside

        started = time.monotonic()
        await peer.request("launch", request=launch("env-2", plan))
        status, _ = await _finish(peer, "env-2")
        assert status["exit_code"] == 0 and time.monotonic() - started < 30  # the log below says it was reused
        out = await _stdout(peer, "env-2")
        assert "is ready here: reusing it" in out and "building" not in out and f"job {root}" in out

        missing = plan_for([pinned(make_wheel(tmp_path / "..", "absent", "1.0", {"absent.py": ""}), "absent", "1.0")],
                           sys.executable, VERSION)
        await peer.request("launch", request=launch("env-3", missing))
        status, _ = await _finish(peer, "env-3")
        assert status["reason"] == "failed-to-start" and status["exit_code"] == 127
        assert status["message"] == (f"environment {missing.env_hash[:12]}: the wheel absent-1.0-py3-none-any.whl "
                                     "(absent==1.0) is not in this host's wheelhouse; it was never shipped here")
        assert "[mlfleet env] failed: the wheel absent" in await _stdout(peer, "env-3")
        assert not (state / "envs" / missing.env_hash).exists()
    finally:
        await peer.close()


async def test_a_run_cancelled_while_its_environment_builds_never_starts(agent, tmp_path: Path) -> None:
    state, sock = agent
    plan = plan_for([], sys.executable, VERSION, setup=["sleep 30"])
    request = LaunchRequest(run_id="env-cancel", job_id="j2", argv=["python", "-c", "print('ran')"],
                            workdir=str(tmp_path), env={}, environment=plan)
    peer = await open_unix_peer(str(sock), "agent")
    try:
        await peer.hello("test")
        await peer.request("launch", request=msgspec.to_builtins(request))
        deadline = time.monotonic() + 20
        while not (await peer.request("status", run_ids=["env-cancel"]))[0].get("preparing_since"):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # into the setup's sleep
        started = time.monotonic()
        await peer.request("cancel", run_id="env-cancel")
        status, _ = await _finish(peer, "env-cancel", timeout=10)
        assert status["reason"] == "cancelled" and time.monotonic() - started < 20  # not the setup's 30 s
        assert "ran" not in (await _stdout(peer, "env-cancel")).splitlines()
        assert not (state / "envs" / plan.env_hash).exists()
        assert not [p for p in os.listdir(state / "envs") if not p.endswith(".lock")]
    finally:
        await peer.close()
