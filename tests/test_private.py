"""Private by default: another local user reads nothing of an installation and can plant nothing in it.

The other user is a real OS account (``mlfleet-other``, made here with
useradd) acting through ``runuser``; the victim is the user running the
tests. Stories where the other user pre-creates ``/tmp/mlfleet-UID`` run the
victim's CLI in a mount namespace whose ``/tmp`` is a sticky folder of the
test's own, so no other test's sockets are touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from conftest import REPO, CliResult, Fleet, SshFleet

OTHER = "mlfleet-other"

# What the other user runs (their own Python, stdlib only): try to read every path it is given.
TRY_READ = r"""
import json, os, socket, stat, sys
got = []
for path in json.loads(sys.argv[1]):
    try:
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode):
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
        elif stat.S_ISDIR(st.st_mode):
            os.listdir(path)
        else:
            with open(path, "rb") as fh:
                fh.read(1)
        got.append(path)
    except PermissionError:
        pass
print(json.dumps(got))
"""

# A server the other user plants: it writes down every connection and every byte it is sent.
PLANTED_SERVER = r"""
import os, socket, sys
path, notes = sys.argv[1], sys.argv[2]
os.makedirs(os.path.dirname(path), exist_ok=True)
srv = socket.socket(socket.AF_UNIX)
srv.bind(path)
os.chmod(path, 0o777)
srv.listen(16)
print("ready", os.getpid(), flush=True)
while True:
    conn, _ = srv.accept()
    with open(notes, "ab") as fh:
        fh.write(b"connection\n")
    conn.settimeout(2)
    try:
        data = conn.recv(65536)
    except OSError:
        data = b""
    with open(notes, "ab") as fh:
        fh.write(data + b"\n")
    conn.sendall(b'{"id": 1, "result": {"protocol": 1, "role": "controller", "version": "0"}}\n')
    conn.close()
"""


class Other:
    """The second OS user: runs commands as itself with a Python it can execute."""

    def __init__(self) -> None:
        import pwd
        import time

        # Two xdist workers (or two test runs) may make the user at once: the loser's useradd finds
        # /etc/passwd locked (exit 10, "try again later"), not only the user there (exit 9). So it tries again.
        for _ in range(40):
            made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER],
                                  capture_output=True, text=True)
            if made.returncode != 10:
                break
            time.sleep(0.25)
        try:
            self.uid = pwd.getpwnam(OTHER).pw_uid
        except KeyError:
            raise AssertionError(f"useradd {OTHER} failed ({made.returncode}): {made.stderr.strip()}") from None
        self.python = next((p for p in (os.path.realpath(sys.executable), "/usr/bin/python3", "/usr/local/bin/python3")
                            if self.run([p, "-c", "pass"], check=False).returncode == 0), None)
        assert self.python, f"no Python that {OTHER} may run"

    def run(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["runuser", "-u", OTHER, "--", *argv], capture_output=True, text=True, timeout=60,
                                cwd="/")
        assert not check or result.returncode == 0, result.stderr
        return result

    def py(self, script: str, *args: str) -> str:
        return self.run([self.python, "-c", script, *args]).stdout

    def readable(self, paths: list[Path]) -> list[str]:
        """The paths the other user managed to open, list or connect to."""
        return json.loads(self.py(TRY_READ, json.dumps([str(p) for p in paths])))

    @contextlib.contextmanager
    def planted_server(self, path: Path, notes: Path) -> Iterator[None]:
        """A listening socket of theirs at ``path`` for as long as the block runs."""
        proc = subprocess.Popen(["runuser", "-u", OTHER, "--", self.python, "-c", PLANTED_SERVER, str(path), str(notes)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        word, pid = proc.stdout.readline().split()
        assert word == "ready"
        try:
            yield
        finally:
            os.kill(int(pid), signal.SIGKILL)  # runuser does not pass SIGKILL on to what it runs
            proc.wait(10)


@pytest.fixture(scope="module")
def other() -> Other:
    return Other()


def shared_dir(parent: Path, name: str = "shared") -> Path:
    """A sticky folder every user may write to, like /tmp (its parent opened for traversal)."""
    os.chmod(parent, 0o755)
    folder = parent / name
    folder.mkdir()
    os.chmod(folder, 0o1777)
    return folder


def loose(root: Path) -> list[str]:
    """Every path under ``root`` whose mode is not 0700 (folder, executable) or 0600 (file)."""
    bad = []
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            bad.append(f"{path} is a link")
        elif stat.S_ISDIR(st.st_mode) and mode != 0o700:
            bad.append(f"{path} {oct(mode)}")
        elif not stat.S_ISDIR(st.st_mode) and mode not in (0o600, 0o700):
            bad.append(f"{path} {oct(mode)}")
    return bad


def one_sentence(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlfleet: ") and "Traceback" not in err, err
    return lines[0]


def test_a_home_made_0755_with_0644_files_ends_private_and_the_other_user_reads_nothing(fleet: Fleet,
                                                                                       other: Other) -> None:
    root = fleet.root
    os.chmod(root, 0o755)
    (root / "config.yaml").write_text("controller:\n  tick: 0.2s\n")
    (root / "logs").mkdir()
    (root / "logs" / "controller.log").write_text("a log from an older mlfleet\n")
    (root / "code").mkdir()
    (root / "code" / f"{'0' * 64}.tar.gz").write_bytes(b"an old snapshot")
    for path in [root / "logs", root / "code"]:
        os.chmod(path, 0o755)
    for path in [root / "config.yaml", root / "logs" / "controller.log", root / "code" / f"{'0' * 64}.tar.gz"]:
        os.chmod(path, 0o644)
    secret = f"hunter2-{os.getpid()}"
    spec = fleet.write_spec("secret", f"name: secret\ncommand: [python, -c, \"print('ran')\"]\nenv: {{TOKEN: {secret}}}\n")
    os.chmod(spec, 0o644)

    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120)
    assert done.code == 0 and done.json()["state"] == "succeeded", done.err

    assert loose(root) == []
    files = [p for p in root.rglob("*") if not p.is_dir()]
    names = {p.name for p in files}
    assert {"mlfleet.duckdb", "mlfleet.duckdb.wal", "controller.sock", "agent-local.sock", "controller.log",
            "agent-local.log", "launch.json", "stdout.log", "metrics.jsonl"} <= names, names
    assert any(p.parent.name == "code" and p.name != f"{'0' * 64}.tar.gz" for p in files)  # the job's snapshot
    assert any(secret.encode() in p.read_bytes() for p in files if p.name.startswith("mlfleet.duckdb")
               or p.name == "launch.json")  # the secret is there to be stolen: what we protect is real

    assert other.readable([root, *root.rglob("*")]) == []
    # Second wall: even with every folder opened for traversal, each file by itself refuses the other user.
    for folder in [root, *[p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()]]:
        os.chmod(folder, 0o711)
    assert other.readable(files) == []


def test_what_the_user_asks_for_keeps_the_users_umask(fleet: Fleet) -> None:
    outside = Path(tempfile.mkdtemp(prefix="mlfu", dir="/tmp"))
    try:
        spec = fleet.write_spec("own", f"name: own\ncommand: [python, -c, \"open('{outside}/model.txt', 'w')\"]\n")
        submit = subprocess.run([sys.executable, "-m", "mlfleet", "submit", str(spec), "--wait"], env=fleet.env,
                                capture_output=True, text=True, timeout=120, umask=0o022, cwd=REPO)
        assert submit.returncode == 0, submit.stderr
        assert stat.S_IMODE((outside / "model.txt").stat().st_mode) == 0o644  # a job's own file: the user's umask

        export = subprocess.run([sys.executable, "-m", "mlfleet", "runs", "export", "-o", str(outside / "runs.csv"),
                                 "--format", "csv"], env=fleet.env, capture_output=True, text=True, timeout=60,
                                umask=0o027, cwd=REPO)
        assert export.returncode == 0, export.stderr
        assert stat.S_IMODE((outside / "runs.csv").stat().st_mode) == 0o640
        assert loose(fleet.home.data_dir / "agents") == []
    finally:
        shutil.rmtree(outside, ignore_errors=True)


def test_a_home_owned_by_another_user_is_refused_in_one_sentence(fleet: Fleet, other: Other) -> None:
    shared = shared_dir(fleet.root)
    theirs = shared / "theirs"
    other.run(["mkdir", "-m", "777", str(theirs)])
    fleet.env["MLFLEET_HOME"] = str(theirs)

    for command in (["jobs", "list"], ["controller", "run"]):
        result = fleet.cli(*command, timeout=60)
        assert result.code == 5
        line = one_sentence(result.err)
        assert str(theirs) in line and OTHER in line and "MLFLEET_HOME" in line, line
    assert list(theirs.iterdir()) == []  # nothing of ours was written where they can read it


def test_a_file_another_user_planted_in_a_once_open_home_is_refused_and_stays_empty(fleet: Fleet,
                                                                                     other: Other) -> None:
    os.chmod(fleet.root, 0o777)  # an installation once left open to everyone
    planted = fleet.root / "mlfleet.duckdb"
    other.run(["touch", str(planted)])  # they own it, so they could read it whatever mode it gets

    result = fleet.cli("jobs", "list", timeout=60)
    assert result.code == 5
    line = one_sentence(result.err)
    assert f"{planted} belongs to {OTHER}" in line, line
    assert planted.stat().st_size == 0  # nothing was written into their file
    assert stat.S_IMODE(fleet.root.stat().st_mode) == 0o700  # the home itself is closed again


def test_a_symlink_planted_on_the_way_to_the_home_is_refused(fleet: Fleet, other: Other) -> None:
    shared = shared_dir(fleet.root)
    target = shared / "target"
    other.run(["mkdir", "-m", "777", str(target)])
    other.run(["ln", "-s", str(target), str(shared / "link")])
    fleet.env["MLFLEET_HOME"] = str(shared / "link" / "home")

    result = fleet.cli("controller", "start", timeout=60)
    assert result.code == 5
    line = one_sentence(result.err)
    assert f"{shared / 'link'} is a symbolic link that belongs to {OTHER}" in line, line
    assert list(target.iterdir()) == []


def test_our_socket_swapped_for_a_link_to_theirs_is_never_spoken_to(fleet: Fleet, other: Other) -> None:
    fleet.cli("controller", "start", check=True)
    fleet.cli("controller", "stop", check=True)
    shared = shared_dir(fleet.root)
    planted, notes = shared / "theirs" / "c.sock", shared / "notes"
    with other.planted_server(planted, notes):
        fleet.home.controller_socket.unlink(missing_ok=True)
        fleet.home.controller_socket.symlink_to(planted)
        result = fleet.cli("jobs", "list", timeout=60)
    assert result.code == 5
    assert "is not a socket" in one_sentence(result.err)
    assert not notes.exists()  # not even a connection


class NamespacedFleet(Fleet):
    """A fleet whose CLI sees ``fake_tmp`` as /tmp (a mount namespace per command; processes it starts share it)."""

    def __init__(self, root: Path, fake_tmp: Path) -> None:
        super().__init__(root)
        self.fake_tmp = fake_tmp

    def cli(self, *args: str, timeout: float = 90, check: bool = False) -> CliResult:
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", 'mount --bind "$0" /tmp && exec "$@"',
                str(self.fake_tmp), sys.executable, "-m", "mlfleet", *args]
        proc = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout, cwd=REPO)
        result = CliResult(proc.returncode, proc.stdout, proc.stderr)
        assert not check or proc.returncode == 0, proc.stderr
        return result


@pytest.fixture
def long_home() -> NamespacedFleet:
    """An installation whose path is too long for sockets, so they fall back to /tmp/mlfleet-UID."""
    base = Path(tempfile.mkdtemp(prefix="mlfl", dir="/var/tmp"))
    os.chmod(base, 0o755)
    fake_tmp = base / "tmp"
    fake_tmp.mkdir()
    os.chmod(fake_tmp, 0o1777)
    installation = NamespacedFleet(base / ("h" * 100), fake_tmp)
    assert installation.home.run_dir.parent == Path(f"/tmp/mlfleet-{os.getuid()}")
    try:
        yield installation
    finally:
        installation.kill_everything()
        shutil.rmtree(base, ignore_errors=True)


def seen_as(fleet: NamespacedFleet, path: Path) -> Path:
    """Where a path under the namespace's /tmp really is."""
    return fleet.fake_tmp / path.relative_to("/tmp")


@pytest.mark.parametrize("how", ["folder", "symlink"])
def test_a_planted_tmp_fallback_is_refused_and_the_planted_socket_hears_nothing(long_home: NamespacedFleet,
                                                                                 other: Other, how: str) -> None:
    fleet = long_home
    fallback = seen_as(fleet, fleet.home.run_dir.parent)
    planted = seen_as(fleet, fleet.home.controller_socket)
    notes = fleet.fake_tmp / "notes"
    if how == "symlink":  # their folder, reached through a link named like ours
        other.run(["mkdir", "-m", "777", str(fleet.fake_tmp / "decoy")])
        other.run(["ln", "-s", str(fleet.fake_tmp / "decoy"), str(fallback)])
    else:
        other.run(["mkdir", "-m", "777", str(fallback)])
    spec = fleet.root.parent / "job.yaml"
    spec.write_text("name: secret\ncommand: [python, -c, \"print('ran')\"]\nenv: {TOKEN: hunter2}\n")
    with other.planted_server(planted, notes):
        result = fleet.cli("submit", str(spec), "--json", timeout=60)
        started = fleet.cli("controller", "start", timeout=60)
    assert result.code == 5, result.out
    line = one_sentence(result.err)
    expected = "is a symbolic link" if how == "symlink" else f"belongs to {OTHER}"
    assert f"/tmp/mlfleet-{os.getuid()} {expected}" in line and "MLFLEET_HOME" in line, line
    assert "job_id" not in result.out  # never a silent success
    assert started.code == 5 and expected in one_sentence(started.err)
    assert not notes.exists()  # the planted server never had a connection
    assert not fleet.root.exists() or not (fleet.root / "mlfleet.duckdb").exists()


def test_the_tmp_fallback_is_made_private_and_a_loose_one_of_ours_is_tightened(long_home: NamespacedFleet) -> None:
    fleet = long_home
    fallback = seen_as(fleet, fleet.home.run_dir.parent)
    fallback.mkdir(mode=0o755)
    os.chmod(fallback, 0o755)  # ours, made by hand or an older mlfleet
    fleet.cli("controller", "start", check=True)
    run_dir = seen_as(fleet, fleet.home.run_dir)
    assert stat.S_IMODE(fallback.stat().st_mode) == 0o700
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700 and run_dir.stat().st_uid == os.getuid()
    assert stat.S_ISSOCK((run_dir / "controller.sock").lstat().st_mode)
    assert fleet.cli("jobs", "list").code == 0
    fleet.cli("controller", "stop", check=True)


def test_a_node_state_dir_made_0755_is_tightened_and_shipped_code_is_private(ssh_fleet: SshFleet) -> None:
    fleet = ssh_fleet.fleet
    state = ssh_fleet.state_dir("node-a")
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    (state / "notes.txt").write_text("left by an older agent\n")
    os.chmod(state / "notes.txt", 0o644)
    project = fleet.root / "project"
    project.mkdir()
    (project / "run.sh").write_text("#!/bin/sh\necho shipped\n")
    os.chmod(project / "run.sh", 0o755)
    (project / "job.yaml").write_text("name: shipped\ncommand: [./run.sh]\nconstraints: {hosts: [node-a]}\n")
    ssh_fleet.add("node-a")
    ssh_fleet.wait_up("node-a")

    job = fleet.cli_json("submit", str(project / "job.yaml"))
    assert fleet.wait_state(job["job_id"], {"succeeded", "failed"})["state"] == "succeeded"
    assert loose(state) == []
    script = state / "code" / job["code_hash"] / "run.sh"
    assert stat.S_IMODE(script.stat().st_mode) == 0o700  # still executable, by its owner only
    assert "shipped" in fleet.cli("jobs", "logs", job["job_id"]).out
