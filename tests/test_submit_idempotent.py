"""Submitting twice is safe: one key, one job, run once, whatever happens to the controller.

A tester killed the controller mid-submit and saw the job recorded while the
user was told exit 5; submitting again ran the spec twice. Here the
controller is SIGKILLed at random moments of real ``mlfleet submit`` commands
(and, through an inotify watch on its DuckDB WAL, right at the commit, before
the answer can leave), the command is run again with its key, and every key
must name exactly one job that started exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import os
import random
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from commit_watch import CommitWatch
from conftest import REPO, CliResult, Fleet
from mlfleet.core.controller.client import connect

MAY_EXIST = "the job may exist"
RANDOM_TRIALS = 20  # kills at a random delay over the whole command, a third of them killed twice
ACCEPTED_TRIALS = 8  # kills 0-30 ms after the controller took the command's connection: hello, checks, snapshot
COMMIT_TRIALS = 8  # kills at the commit; more of them (up to 40) until enough landed after it, before the answer
COMMIT_TRIALS_MAX = 40
WINDOW_HITS_WANTED = 5


def _spec(fleet: Fleet, name: str) -> Path:
    """A job that writes one line per start into starts.log: a second start of it would show."""
    starts = fleet.root / "starts.log"
    code = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    return fleet.write_spec(name, f"name: {name}\ncommand: [{sys.executable!r}, -c, {code!r}, {str(starts)!r}, {name}]\n")


def _start_submit(fleet: Fleet, spec: Path, key: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mlfleet", "submit", str(spec), "--key", key, "--json"],
                            env=fleet.env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen[str]) -> CliResult:
    out, err = proc.communicate(timeout=120)
    return CliResult(proc.returncode, out, err)


def _job_id_or_may_exist(result: CliResult, key: str) -> dict[str, Any] | None:
    """What every submit must end with: exit 0 and the job, or exit 5 and the sentence with the key."""
    assert "Traceback" not in result.err, result.err
    if result.code == 0:
        answer = result.json()
        assert re.fullmatch(r"j[0-9a-f]{8}", answer["job_id"]) and answer["key"] == key, answer
        return answer
    assert result.code == 5, (result.code, result.err)
    assert MAY_EXIST in result.err and f"mlfleet jobs list --key {key}" in result.err, result.err
    return None


# What a submit may print on stderr besides its one sentence: the notice that it asks again. And, for
# now, asyncio's note about a request future that Peer.request left unretrieved when a write to a dying
# controller failed (core/protocol.py, being rewritten): counted and reported, not a user's sentence.
_NOTICE = re.compile(r"mlfleet: lost the controller during the submit \(.*\); asking again with the same key "
                     r"for up to \d+ s")
_ASYNCIO_NOTE = ("Future exception was never retrieved", "future: <Future finished exception=UnavailableError(")


def _stray_lines(err: str) -> tuple[list[str], int]:
    """Lines that are neither the notice nor a final sentence (``mlfleet: ...``), and how many asyncio notes."""
    lines = [line for line in err.splitlines() if line.strip()]
    notes = [line for line in lines if line.startswith(_ASYNCIO_NOTE)]
    stray = [line for line in lines if line not in notes and not _NOTICE.fullmatch(line)
             and not (line.startswith("mlfleet: ") and line is lines[-1])]
    return stray, len(notes) // 2


def _kill(pid: int | None) -> bool:
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
        return True
    return False


def _settle(fleet: Fleet, quiet: bool = True) -> int:
    """A running controller (its pid); ``quiet``: the local host up and no job in flight, so nothing else writes."""

    async def ask() -> None:
        async with await connect(fleet.home) as client:  # starts one if none runs, as any command would
            for _ in range(600):
                jobs, hosts = await client.call("jobs_list"), await client.call("hosts_list")
                if not quiet or (all(j["state"] in ("succeeded", "failed") for j in jobs)
                                 and any(h["name"] == "local" and h["state"] == "up" for h in hosts)):
                    return
                await asyncio.sleep(0.1)
            raise AssertionError("the controller did not become quiet within 60 s")

    asyncio.run(ask())
    pid = fleet.controller_pid
    assert pid is not None
    return pid


@contextlib.contextmanager
def _no_controller_can_start(fleet: Fleet) -> Iterator[None]:
    """Hold the controller's lock, as a stuck controller would: every auto-start fails at once."""
    fd = os.open(fleet.home.controller_lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # waits for the killed controller to be gone
        yield
    finally:
        os.close(fd)


def _sockets(pid: int) -> set[str]:
    """The sockets process ``pid`` holds now (``socket:[inode]``), each connection its own."""
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:"):
                held.add(target)
    return held


def _wait_for_a_client(pid: int, before: set[str], timeout: float = 30) -> None:
    """Until the quiet controller ``pid`` holds a socket it did not hold ``before``: the client it accepted.

    By identity, not by count: the connection of the client that settled the controller may still be
    closing when the count is taken, and a new connection then only brings the count back where it was
    (seen once under load: "no client connected" while the client was connected).
    """
    deadline = time.monotonic() + timeout
    while not (_sockets(pid) - before):
        assert time.monotonic() < deadline, "no client connected"
        time.sleep(0.0005)


def _second_kill(fleet: Fleet, first: int, proc: subprocess.Popen[str], rng: random.Random) -> bool:
    """Kill the controller the retrying command started, too, at a random moment of its start or answer."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        pid = fleet.controller_pid
        if pid not in (None, first):
            time.sleep(rng.uniform(0, 0.4))
            return proc.poll() is None and _kill(pid)
        time.sleep(0.01)
    return False


def _story(fleet: Fleet, trials: list[dict[str, Any]], names: set[str],
           commands: tuple[CliResult, ...] = ()) -> str:
    """What the file and the controller's log say about the jobs ``names``: the message of a failed check.

    Why: this check fails rarely (a race under SIGKILL), and a bare "two job ids" cannot be told apart
    afterwards: which trial, which attempt answered, what each command said, what the file holds.
    """
    def query(sql: str) -> Any:
        result = fleet.cli("db", "query", sql, "--json")
        return result.json()["rows"] if result.code == 0 else result.err.strip()

    quoted = ", ".join(f"'{n}'" for n in sorted(names)) or "''"
    jobs = f"select job_id from jobs where name in ({quoted})"
    lines = [f"trials: {[t for t in trials if t['name'] in names]}"]
    lines += [f"command exit {c.code}, out {c.out.strip()!r}, err {c.err.strip()!r}" for c in commands]
    lines += [f"jobs: {query(f'select job_id, name, owner, state, submitted_at from jobs where name in ({quoted})')}",
              f"submit_keys: {query(f'select owner, key, job_id, created_at from submit_keys where job_id in ({jobs})')}",
              f"audit: {query(f'select ts, action, target, detail from audit where target in ({jobs}) order by id')}"]
    try:
        log = (fleet.home.log_dir / "controller.log").read_text(errors="replace").splitlines()
    except OSError:
        log = []
    return "\n".join(lines + ["controller.log (last 40 lines):"] + log[-40:])


@pytest.mark.timeout(900)  # some 30 trials, each a submit, a controller restart and the command again
def test_sigkill_of_the_controller_at_random_moments_of_submits_never_makes_a_job_twice(fleet: Fleet) -> None:
    (fleet.root / "config.yaml").write_text("client:\n  submit_retry: 60s\n")
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    # How long a whole submit command takes here, so that random kills spread over all of it.
    _settle(fleet)
    took = []
    for i in range(2):
        started = time.monotonic()
        assert _job_id_or_may_exist(_finish(_start_submit(fleet, _spec(fleet, f"calibrate{i}"), f"cal-{i}")),
                                    f"cal-{i}")
        took.append(time.monotonic() - started)
    span = max(took)

    trials: list[dict[str, Any]] = []
    kills = 0
    codes: collections.Counter[str] = collections.Counter()
    asyncio_notes: list[int] = []

    def trial(how: str) -> dict[str, Any]:
        nonlocal kills
        name = f"t{len(trials)}"
        key = f"{name}-{rng.randrange(1 << 32):08x}"
        spec = _spec(fleet, name)
        pid = _settle(fleet, quiet=how in ("accepted", "commit"))
        with CommitWatch(fleet.home.db_path) as watch:
            before = _sockets(pid)
            proc = _start_submit(fleet, spec, key)
            if how == "commit":
                assert watch.wait(30), "the controller never committed"
            elif how == "accepted":
                _wait_for_a_client(pid, before)
                time.sleep(rng.uniform(0, 0.03))
            else:
                time.sleep(rng.uniform(0, span))
            kills += _kill(pid)
        if how == "random-twice":
            kills += _second_kill(fleet, pid, proc, rng)
        first = _finish(proc)
        codes[f"first {first.code}"] += 1
        answer = _job_id_or_may_exist(first, key)
        stray, notes = _stray_lines(first.err)
        assert not stray, first.err
        asyncio_notes.append(notes)
        # The user (or CI) runs the same command again: always safe, always the same job.
        again = fleet.cli("submit", str(spec), "--key", key, "--json")
        codes[f"again {again.code}"] += 1
        repeat = _job_id_or_may_exist(again, key)
        assert repeat is not None, again.err
        if answer is not None:
            assert repeat["job_id"] == answer["job_id"] and repeat["existing"], \
                (answer, repeat, _story(fleet, [{"name": name, "key": key, "how": how}], {name}, (first, again)))
        lost = "lost the controller" in first.err
        return {"name": name, "key": key, "how": how, "job_id": repeat["job_id"], "lost": lost,
                # the job was written by an attempt whose answer never arrived: the window
                "window": bool(lost and answer is not None and answer["existing"])}

    for i in range(RANDOM_TRIALS):
        trials.append(trial("random-twice" if i % 3 == 0 else "random"))
    for _ in range(ACCEPTED_TRIALS):
        trials.append(trial("accepted"))
    for i in range(COMMIT_TRIALS_MAX):
        trials.append(trial("commit"))
        if i + 1 >= COMMIT_TRIALS and sum(t["window"] for t in trials if t["how"] == "commit") >= WINDOW_HITS_WANTED:
            break

    # Every job has ended; now count what the file and the jobs themselves say.
    _settle(fleet)
    by_key = fleet.cli_json("db", "query", "select key, job_id from submit_keys")["rows"]
    jobs = fleet.cli_json("db", "query", "select name, job_id from jobs")["rows"]
    runs = fleet.cli_json("db", "query", "select job_id, count(*) from runs group by job_id")["rows"]
    submits = fleet.cli_json("db", "query", "select target, count(*) from audit where action = 'job.submit' "
                                            "group by target")["rows"]
    starts = collections.Counter((fleet.root / "starts.log").read_text().split())
    names = collections.Counter(name for name, _ in jobs)
    expected = {t["name"] for t in trials} | {"calibrate0", "calibrate1"}
    duplicated = sorted(n for n, count in names.items() if count > 1)
    twice = sorted(n for n, count in starts.items() if count > 1)
    window = sum(t["window"] for t in trials)
    kinds = collections.Counter(t["how"] for t in trials)
    print(f"\nidempotent submit: {len(trials)} trials ({dict(kinds)}), {kills} SIGKILLs, "
          f"{sum(t['lost'] for t in trials)} commands lost the controller, {window} killed after the commit and "
          f"before the answer, {len(duplicated)} jobs duplicated, {len(twice)} run twice; exit codes {dict(codes)}; "
          f"{sum(asyncio_notes)} asyncio 'Future exception was never retrieved' notes on stderr")

    assert not duplicated and set(names) == expected, \
        (duplicated, sorted(set(names) ^ expected), _story(fleet, trials, set(duplicated) | (set(names) ^ expected)))
    key_counts = collections.Counter(k for k, _ in by_key)
    assert sorted(key_counts.elements()) == sorted([t["key"] for t in trials] + ["cal-0", "cal-1"]), \
        _story(fleet, trials, {t["name"] for t in trials if key_counts[t["key"]] != 1})
    assert {job for _, job in by_key} == {job for _, job in jobs}, \
        _story(fleet, trials, {n for n, j in jobs if j not in {job for _, job in by_key}})  # every key names one job, and back
    answered = {t["key"]: t["job_id"] for t in trials}
    assert answered.items() <= dict(by_key).items(), \
        _story(fleet, trials, {t["name"] for t in trials if dict(by_key).get(t["key"]) != t["job_id"]})
    assert not twice and set(starts) == expected, (twice, sorted(set(starts) ^ expected))
    assert all(count == 1 for _, count in runs) and len(runs) == len(expected), runs
    assert all(count == 1 for _, count in submits) and len(submits) == len(expected), submits  # audited once
    assert window >= WINDOW_HITS_WANTED, f"only {window} kills landed between the commit and the answer"


@pytest.mark.timeout(600)
def test_a_submit_that_cannot_reach_the_controller_again_says_the_job_may_exist_and_how_to_check(fleet: Fleet) -> None:
    (fleet.root / "config.yaml").write_text("client:\n  submit_retry: 2s\n")
    seen = []
    # Killed at its commit, the job is there; killed as it snapshots the workdir (the submit was received,
    # nothing is recorded yet), it is not.
    for moment, recorded in (("commit", True), ("snapshot", False)):
        for attempt in range(10):
            key, spec = f"{moment}-{attempt}", _spec(fleet, f"{moment}{attempt}")
            pid = _settle(fleet)
            watched = (CommitWatch(fleet.home.db_path) if moment == "commit"
                       else CommitWatch.any_file_in(fleet.home.code_cache_dir))
            with watched as watch:
                proc = _start_submit(fleet, spec, key)
                assert watch.wait(30)
                _kill(pid)
            with _no_controller_can_start(fleet):
                result = _finish(proc)
            if result.code == 0 or MAY_EXIST not in result.err:
                # The answer left before the kill, or the kill came before the submit was sent (then no
                # job exists and the command says only that the controller could not start): no doubt.
                assert result.code == 0 or (result.code == 5 and "could not start" in result.err), result.err
                continue
            assert _job_id_or_may_exist(result, key) is None
            sentence = next(line for line in result.err.splitlines() if MAY_EXIST in line)
            assert sentence.startswith(f"mlfleet: the controller was lost while submitting {moment}{attempt} ")
            # Follow the sentence, word for word: the commands it names tell the truth, and the second is safe.
            found = fleet.cli_json(*shlex.split(re.search(r"check with '([^']+)'", sentence).group(1))[1:])
            command = shlex.split(re.search(r"or run '(.+)' again, which is safe$", sentence).group(1))
            assert command[:2] == ["mlfleet", "submit"] and command[-3:] == ["--key", key, "--json"]
            again = fleet.cli(*command[1:])
            assert again.code == 0, again.err
            assert again.json()["existing"] is bool(found)
            assert [j["job_id"] for j in fleet.cli_json("jobs", "list", "--key", key)] == [again.json()["job_id"]]
            if bool(found) is recorded:
                seen.append(moment)
                break
    assert seen == ["commit", "snapshot"], f"only {seen} met in 10 attempts each"


def test_a_ci_script_that_retries_a_whole_command_with_its_key_gets_the_same_job(fleet: Fleet) -> None:
    spec = _spec(fleet, "nightly")
    first = fleet.cli_json("submit", str(spec), "--key", "ci-4711-nightly")
    assert first["existing"] is False and first["key"] == "ci-4711-nightly"
    job_id = first["job_id"]

    plain = fleet.cli("submit", str(spec), "--key", "ci-4711-nightly")
    assert plain.code == 0 and plain.out.strip() == job_id
    assert plain.err.strip() == f"mlfleet: key ci-4711-nightly was already submitted as job {job_id}; nothing new was queued"
    assert fleet.cli("controller", "stop").code == 0  # a clean restart keeps the key ...
    assert fleet.cli_json("submit", str(spec), "--key", "ci-4711-nightly")["job_id"] == job_id
    os.kill(fleet.controller_pid, signal.SIGKILL)  # ... and so does a crash
    fleet.wait_for(lambda: fleet.controller_pid is None, what="the controller to die")
    again = fleet.cli_json("submit", str(spec), "--key", "ci-4711-nightly")
    assert again["job_id"] == job_id and again["existing"] is True
    assert fleet.cli_json("jobs", "show", job_id)["key"] == "ci-4711-nightly"
    assert [j["job_id"] for j in fleet.cli_json("jobs", "list", "--key", "ci-4711-nightly")] == [job_id]
    assert fleet.cli("jobs", "list", "--key", "ci-4712-nightly").out.strip() == \
        "no job of yours was submitted with key ci-4712-nightly"

    # The same key with an edited spec is a mistake in the script: refused, nothing queued.
    edited = fleet.write_spec("nightly-edited", spec.read_text() + "priority: 5\n")
    refused = fleet.cli("submit", str(edited), "--key", "ci-4711-nightly")
    assert refused.code == 2 and refused.out == ""
    assert refused.err == (f"mlfleet: submit key 'ci-4711-nightly' was already used for job {job_id} with a "
                           "different spec (priority differs); submit this spec with a new key (or without --key)\n")
    assert fleet.cli("submit", str(edited), "--key", "ci-4712-nightly").code == 0

    # Keys a shell or argparse would mangle, or that no one could type again, are refused before anything starts.
    for bad in ("", "two words", "-leading-dash", "x" * 129, "quote'd", "tab\there", "ünï"):
        result = fleet.cli("submit", str(spec), f"--key={bad}")
        assert result.code == 2 and result.err.startswith("mlfleet: the submit key") and result.err.count("\n") == 1, \
            (bad, result.err)

    jobs = fleet.cli_json("db", "query", "select count(*) from jobs")["rows"]
    audited = fleet.cli_json("audit", "list", "--action", "job.submit")
    assert jobs == [[2]] and len(audited) == 2 and '"key": "ci-4711-nightly"' in audited[-1]["detail"]
    fleet.wait_for(lambda: (fleet.root / "starts.log").exists()
                   and sorted((fleet.root / "starts.log").read_text().split()) == ["nightly", "nightly"], 60,
                   what="both jobs to run")
    assert len(fleet.cli_json("jobs", "show", job_id)["runs"]) == 1


def test_many_attempts_of_one_submit_at_once_make_one_job(fleet: Fleet) -> None:
    """A retry can overtake a first attempt still snapshotting: the fastest writers, one key."""
    spec = _spec(fleet, "racer")
    _settle(fleet, quiet=False)
    results: list[CliResult] = []
    procs = [_start_submit(fleet, spec, "race-1") for _ in range(8)]
    threads = [threading.Thread(target=lambda p=p: results.append(_finish(p))) for p in procs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    answers = [_job_id_or_may_exist(r, "race-1") for r in results]
    assert all(a is not None for a in answers), [r.err for r in results]
    assert len({a["job_id"] for a in answers}) == 1
    assert sum(not a["existing"] for a in answers) == 1  # one attempt made it; the others got it back
    assert fleet.cli_json("db", "query", "select count(*) from jobs")["rows"] == [[1]]
    assert len(fleet.cli_json("audit", "list", "--action", "job.submit")) == 1


def test_a_submit_killed_itself_and_run_again_with_its_key_makes_one_job(fleet: Fleet) -> None:
    """CI's step timeout kills the command mid-submit and the step is retried: the controller finishes its half."""
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    for i in range(6):
        key, spec = f"step-{i}", _spec(fleet, f"step{i}")
        pid = _settle(fleet)
        before = _sockets(pid)
        proc = _start_submit(fleet, spec, key)
        _wait_for_a_client(pid, before)
        time.sleep(rng.uniform(0, 0.03))
        proc.kill()
        proc.wait()
        again = fleet.cli("submit", str(spec), "--key", key, "--json")
        assert _job_id_or_may_exist(again, key) is not None, again.err
        assert [j["job_id"] for j in fleet.cli_json("jobs", "list", "--key", key)] == [again.json()["job_id"]]
    _settle(fleet)
    assert fleet.cli_json("db", "query", "select count(*), count(distinct name) from jobs")["rows"] == [[6, 6]]
    assert sorted((fleet.root / "starts.log").read_text().split()) == [f"step{i}" for i in range(6)]
