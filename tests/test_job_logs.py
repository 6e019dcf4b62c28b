"""A job's stdout and stderr stay under ``logs.max_size`` on the node, however fast it writes.

The job writes straight into its log files; the runner cuts their oldest
part as they pass the limit. These stories check what a user sees: the job
is never held up or killed, the files stay small, ``mlfleet jobs logs``
shows the newest output whole and says how much came before it, and a
follower keeps following across the cuts. The same stories run on ext4
(the oldest blocks are collapsed away) and on tmpfs (they are punched out).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import REPO, Fleet
from mlfleet.agents.logcap import LogKeeper, read_log
from mlfleet.agents.rundir import RunDir
from mlfleet.core.base.units import format_size

WIDTH = 100  # every line is this long, so a line's number says where it sits in the stream
WRITER = f"""\
import os, sys, time
lines, batch, pause = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
peak = 0
for first in range(0, lines, batch):
    os.write(1, b"".join(b"%012d " % i + b"x" * {WIDTH - 14} + b"\\n" for i in range(first, min(lines, first + batch))))
    st = os.fstat(1)
    peak = max(peak, min(st.st_size, st.st_blocks * 512))  # what the log holds on disk right now
    if pause:
        time.sleep(pause)
os.write(2, b"peak %d\\n" % peak)
"""
CAP = 1024**2


def _setup(fleet: Fleet) -> None:
    fleet.home.config_file.write_text("logs:\n  max_size: 1MiB\n")
    (fleet.root / "specs").mkdir(exist_ok=True)
    (fleet.root / "specs" / "writer.py").write_text(WRITER)


def _numbers(text: str) -> list[int]:
    return [int(line[:12]) for line in text.splitlines()]


def _full_speed_story(fleet: Fleet) -> Path:
    """256 MiB at full speed against a 1 MiB cap; returns the run's stdout.log."""
    _setup(fleet)
    lines = 256 * 1024**2 // WIDTH
    spec = fleet.write_spec("flood", f"name: flood\ncommand: [python, writer.py, '{lines}', '2000', '0']\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=300)
    assert done.code == 0, done.out + done.err  # never held up, never killed by the cap
    job_id, run_id = done.json()["job_id"], done.json()["run_id"]
    log = fleet.home.local_agent_dir / "runs" / run_id / "stdout.log"
    assert log.stat().st_blocks * 512 <= CAP + 64 * 1024

    shown = fleet.cli("jobs", "logs", job_id, timeout=120)
    assert shown.code == 0, shown.err
    numbers = _numbers(shown.out)
    first = numbers[0]
    assert numbers == list(range(first, lines))  # the newest output, whole, up to the last line, no gap
    assert 0.5 * CAP <= len(shown.out) <= CAP
    assert shown.err.splitlines() == [
        f"[mlfleet: {format_size(first * WIDTH)} of earlier output dropped; logs.max_size is 1 MiB]"]

    peak = int(fleet.cli("jobs", "logs", job_id, "--stderr").out.split()[1])
    assert peak < 128 * 1024**2, peak  # unbounded, it would be all 256 MiB
    return log


def test_a_job_flooding_stdout_keeps_the_newest_output_under_the_cap(fleet: Fleet) -> None:
    log = _full_speed_story(fleet)
    assert log.stat().st_size <= CAP
    assert json.loads((log.parent / "logs.json").read_text())["stdout"]["method"] == "collapse"


def test_on_tmpfs_the_oldest_output_is_punched_out_instead(tmp_path: Path) -> None:
    root = Path(tempfile.mkdtemp(prefix="mlf", dir="/dev/shm"))
    fleet = Fleet(root)
    try:
        log = _full_speed_story(fleet)
        assert log.stat().st_size == 256 * 1024**2 // WIDTH * WIDTH  # its length stays; its blocks are freed
        assert json.loads((log.parent / "logs.json").read_text())["stdout"]["method"] == "punch"
    finally:
        fleet.kill_everything()
        shutil.rmtree(root, ignore_errors=True)


def test_logs_follow_keeps_following_across_the_cuts(fleet: Fleet) -> None:
    _setup(fleet)
    lines = 8 * CAP // WIDTH  # 8 MiB in 100 KB bursts, 20 a second: the log is cut about ten times
    spec = fleet.write_spec("talk", f"name: talk\ncommand: [python, writer.py, '{lines}', '1000', '0.05']\n")
    job_id = fleet.cli("submit", str(spec), check=True).out.strip()
    follower = subprocess.run([sys.executable, "-m", "mlfleet", "jobs", "logs", job_id, "-f"], env=fleet.env,
                              capture_output=True, text=True, timeout=180, cwd=REPO)
    assert follower.returncode == 0, follower.stderr
    assert fleet.job(job_id)["state"] == "succeeded"
    numbers = _numbers(follower.stdout)
    assert numbers[-1] == lines - 1
    assert all(b > a for a, b in zip(numbers, numbers[1:]))  # in order, nothing twice
    # Every gap in what the follower printed is announced, with its exact size, and nothing else is.
    gaps = [(b - a - 1) * WIDTH for a, b in zip([-1] + numbers, numbers) if b - a > 1]
    notices = [re.sub(r"^\[mlfleet: (.*?) of (earlier )?output dropped.*", r"\1", line)
               for line in follower.stderr.splitlines()]
    assert notices == [format_size(gap) for gap in gaps]


@pytest.mark.parametrize("where,methods", [("/tmp", ("collapse", "punch", "truncate")),
                                           ("/dev/shm", ("collapse", "punch", "truncate")),
                                           ("/tmp", ("truncate",))], ids=["ext4", "tmpfs", "truncate-only"])
def test_a_reader_that_falls_behind_sees_every_gap_announced_and_nothing_shifted(where: str, methods: tuple) -> None:
    # The runner's keeper and the agent's reader, with a real writer process at full speed and a reader that
    # reads 4 KiB at a time: it falls behind again and again. Whatever it gets must be the job's bytes at the
    # offsets it was told, and each jump must be announced with its size.
    root = Path(tempfile.mkdtemp(prefix="mlf", dir=where))
    run = RunDir(root)
    out = open(root / "stdout.log", "ab", buffering=0)
    err = open(root / "stderr.log", "ab", buffering=0)
    keeper = LogKeeper(run, {"stdout": out.fileno(), "stderr": err.fileno()}, CAP, methods)
    keeper.start()
    lines = 600_000
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(lines), "1000", "0"], stdout=out, stderr=err)
    try:
        exact = methods != ("truncate",)  # collapse and punch lose nothing they were not told to drop
        offset, pending, at, seen, gaps = 0, b"", 0, [], 0  # ``at``: where ``pending`` begins in the stream
        while True:
            got = read_log(run, "stdout", root / "stdout.log", offset, 4096)
            assert got.start >= offset and got.dropped == got.start - offset
            if got.dropped:
                gaps += 1
                pending, at = b"", got.start  # the rest of the line being read is gone
            buffer = pending + got.data
            for piece in buffer.split(b"\n")[:-1]:
                assert len(piece) == WIDTH - 1, piece[:20]  # a whole line of the job's, never two halves
                if exact:
                    assert int(piece[:12]) * WIDTH == at  # and it is at the offset it was written at
                seen.append(int(piece[:12]))
                at += WIDTH
            pending = buffer[buffer.rfind(b"\n") + 1:]
            offset = got.start + len(got.data)
            if writer.poll() is not None and offset >= got.size:
                break
        assert writer.returncode == 0
        assert all(b > a for a, b in zip(seen, seen[1:]))
        assert gaps >= 1
        if exact:  # (emptying the file may take the last lines with it: the last resort keeps less)
            assert seen[-1] == lines - 1 and offset == lines * WIDTH
        assert read_log(run, "stdout", root / "stdout.log", 0, CAP).size == offset
    finally:
        writer.kill()
        writer.wait()
        keeper.stop()
        out.close()
        err.close()
        shutil.rmtree(root, ignore_errors=True)
