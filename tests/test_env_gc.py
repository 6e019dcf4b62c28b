"""Garbage collection of built environments on a node: by age, then by disk budget, never what is in use.

Real folders laid out as agents/envs/build.py leaves them, real run
folders, a real second process holding a build lock, and one real agent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import Fleet
from mlfleet.agents.envs.build import LAST_USED, READY
from mlfleet.agents.envs.gc import GRACE_S, collect_garbage
from mlfleet.core.base.protocol import open_unix_peer

DAY = 86400.0
NOW = time.time()


def env(state: Path, name: str, age_days: float, size: int = 1000) -> str:
    env_hash = (name * 64)[:64]
    root = state / "envs" / env_hash
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "blob").write_bytes(b"x" * size)
    for marker in (READY, LAST_USED):
        (root / marker).write_text("{}")
        os.utime(root / marker, (NOW - age_days * DAY, NOW - age_days * DAY))
    return env_hash


def run_using(state: Path, run_id: str, env_hash: str, ended: bool = False) -> None:
    run = state / "runs" / run_id
    run.mkdir(parents=True)
    (run / "launch.json").write_text(json.dumps({"run_id": run_id, "environment": {"env_hash": env_hash}}))
    if ended:
        (run / "exit.json").write_text(json.dumps({"exit_code": 0}))


def present(state: Path) -> set[str]:
    return {p.name for p in (state / "envs").iterdir() if not p.name.startswith(".")}


def test_an_old_env_goes_and_a_recent_one_stays(tmp_path: Path) -> None:
    old, new = env(tmp_path, "a", 20), env(tmp_path, "b", 1)
    answer = collect_garbage(tmp_path, keep_for=14 * DAY, disk_budget=None, now=NOW)
    assert present(tmp_path) == {new}
    assert answer["removed"] == {old: "unused for longer than keep_for"}


def test_an_env_a_live_run_uses_stays_however_old_and_an_ended_run_protects_nothing(tmp_path: Path) -> None:
    live, done = env(tmp_path, "a", 30), env(tmp_path, "b", 30)
    run_using(tmp_path, "r1", live)
    run_using(tmp_path, "r2", done, ended=True)
    collect_garbage(tmp_path, keep_for=14 * DAY, disk_budget=0, now=NOW)
    assert present(tmp_path) == {live}


def test_over_the_budget_the_least_recently_used_go_first(tmp_path: Path) -> None:
    oldest, middle, newest = env(tmp_path, "a", 5, 1000), env(tmp_path, "b", 3, 1000), env(tmp_path, "c", 2, 1000)
    answer = collect_garbage(tmp_path, keep_for=14 * DAY, disk_budget=2500, now=NOW)
    assert present(tmp_path) == {middle, newest}
    assert answer["removed"] == {oldest: "over the disk budget (least recently used)"}
    assert 2000 <= answer["kept_bytes"] <= 2500


def test_an_env_used_within_the_grace_period_stays_even_over_budget(tmp_path: Path) -> None:
    fresh = env(tmp_path, "a", GRACE_S / DAY / 2)
    collect_garbage(tmp_path, keep_for=0, disk_budget=0, now=NOW)
    assert present(tmp_path) == {fresh}


def test_an_env_whose_lock_a_builder_holds_is_left_alone(tmp_path: Path) -> None:
    busy = env(tmp_path, "a", 30)
    lock = tmp_path / "envs" / f".{busy}.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
                               "os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); "
                               "time.sleep(60)", str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        collect_garbage(tmp_path, keep_for=DAY, disk_budget=0, now=NOW)
        assert present(tmp_path) == {busy}
    finally:
        holder.kill()
        holder.wait()
    collect_garbage(tmp_path, keep_for=DAY, disk_budget=0, now=NOW)
    assert present(tmp_path) == set()


def test_a_build_in_progress_and_an_unfinished_env_are_not_touched_but_trash_is_cleaned(tmp_path: Path) -> None:
    envs = tmp_path / "envs"
    (envs / ".building-abc-123" / "lib").mkdir(parents=True)
    half = envs / ("d" * 64)  # no ready marker: what a crashed build left; ensure_env cleans it under its lock
    (half / "lib").mkdir(parents=True)
    trash = envs / f".trash-{'e' * 64}-99"  # a crash between the rename and the rmtree
    (trash / "lib").mkdir(parents=True)
    (trash / READY).write_text("{}")
    collect_garbage(tmp_path, keep_for=0, disk_budget=0, now=NOW)
    assert (envs / ".building-abc-123").is_dir() and half.is_dir()
    assert not trash.exists()


async def test_a_real_agent_collects_when_asked_with_the_controllers_settings(fleet: Fleet) -> None:
    state = fleet.root / "gc-agent-state"
    old, kept = env(state, "a", 20), env(state, "b", 1)
    sock = fleet.root / "gc.sock"
    proc = subprocess.Popen([sys.executable, "-m", "mlfleet", "agent", "serve", "--state-dir", str(state),
                             "--socket", str(sock), "--name", "gc"], env=fleet.env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        fleet.wait_for(lambda: sock.exists(), what="the agent socket")
        peer = await open_unix_peer(str(sock), "agent")
        try:
            await peer.hello("test")
            answer = await peer.request("env_gc", keep_for=14 * DAY, disk_budget=50 * 1024**3)
            assert answer["removed"] == {old: "unused for longer than keep_for"}
            assert await peer.request("env_ready", env_hashes=[old, kept]) == {old: False, kept: True}
        finally:
            await peer.close()
    finally:
        proc.terminate()
        proc.wait(10)
