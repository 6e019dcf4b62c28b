"""Code shipping stays inside the workdir, and a node unpacks nothing that reaches outside its folder.

The controller packs the workdir at submit (it may run as another user than
the submitter, so a followed symlink would ship whatever it can read); the
agent unpacks what arrives as if it were hostile.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

from conftest import Fleet
from mlfleet.core.base.errors import MlfleetError
from mlfleet.core.base.hello import PROTOCOL_VERSION
from mlfleet.core.base.protocol import Peer

SECRET = "outside-secret-do-not-ship"


def _outside(fleet: Fleet) -> Path:
    """A folder and a file beside the workdir, that no snapshot may contain."""
    outside = fleet.root / "outside"
    (outside / "folder").mkdir(parents=True)
    (outside / "folder" / "keys.txt").write_text(SECRET)
    (outside / "secret.txt").write_text(SECRET)
    return outside


def _project(fleet: Fleet, outside: Path, git: bool) -> Path:
    project = fleet.root / ("git-project" if git else "plain-project")
    (project / "src").mkdir(parents=True)
    (project / "src" / "model.py").write_text("WEIGHTS = 3\n")
    (project / "train.py").write_text("print('train')\n")
    (project / "tracked").mkdir()
    (project / "tracked" / "keys.txt").write_text("a tracked file, soon replaced by a symlinked folder\n")
    if git:
        subprocess.run(["git", "init", "-q", str(project)], check=True)
        subprocess.run(["git", "-C", str(project), "add", "-A"], check=True)
        # The folder git tracks is now a symlink to a folder outside: git still lists tracked/keys.txt.
        shutil.rmtree(project / "tracked")
        (project / "tracked").symlink_to(outside / "folder")
        subprocess.run(["git", "-C", str(project), "add", "-A"], check=True)  # and the symlinks, tracked too
    else:
        shutil.rmtree(project / "tracked")
        (project / "tracked").symlink_to(outside / "folder")
    (project / "ext-dir").symlink_to(outside / "folder")  # a symlinked folder outside
    (project / "secret.txt").symlink_to(outside / "secret.txt")  # a symlinked file outside
    (project / "abs-secret").symlink_to(outside / "folder" / "keys.txt")
    (project / "lib").symlink_to("src")  # inside: kept as a symlink
    (project / "src" / "same.py").symlink_to(project / "train.py")  # inside, but written absolute
    (project / "job.yaml").write_text("name: shipped\ncommand: [python, train.py]\n")
    if git:
        subprocess.run(["git", "-C", str(project), "add", "-A"], check=True)
    return project


@pytest.mark.parametrize("git", [True, False], ids=["git", "plain"])
def test_a_snapshot_ships_nothing_from_outside_the_workdir(fleet: Fleet, git: bool) -> None:
    outside = _outside(fleet)
    project = _project(fleet, outside, git)
    submitted = fleet.cli("submit", str(project / "job.yaml"), "--json")
    assert submitted.code == 0, submitted.err
    answer = submitted.json()

    archive = fleet.home.code_cache_dir / f"{answer['code_hash']}.tar.gz"
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers()}
        contents = b"".join(tar.extractfile(m).read() for m in members.values() if m.isfile())
    assert SECRET.encode() not in contents
    assert sorted(members) == ["job.yaml", "lib", "src/model.py", "src/same.py", "train.py"]
    assert members["lib"].issym() and members["lib"].linkname == "src"
    assert members["src/same.py"].issym() and members["src/same.py"].linkname == "../train.py"
    assert answer["code_files"] == 3

    # Each symlink left out is named once, on stderr, as a warning: the job was still submitted.
    warnings = [line for line in submitted.err.splitlines() if line.startswith("mlfleet: warning: ")]
    assert len(warnings) == 4, submitted.err
    for name in ("ext-dir", "secret.txt", "abs-secret", "tracked"):
        assert any(f" {name} -> " in w and "points outside the workdir; left out" in w for w in warnings), name
    assert "Traceback" not in submitted.err


def test_a_folder_swapped_for_a_symlink_is_never_read_through(fleet: Fleet) -> None:
    # Only git's index still names the file: the folder it was in is now a symlink that git ignores.
    outside = _outside(fleet)
    project = fleet.root / "swapped"
    (project / "conf").mkdir(parents=True)
    (project / "conf" / "keys.txt").write_text("old\n")
    (project / "run.py").write_text("print(1)\n")
    subprocess.run(["git", "init", "-q", str(project)], check=True)
    subprocess.run(["git", "-C", str(project), "add", "-A"], check=True)
    shutil.rmtree(project / "conf")
    (project / "conf").symlink_to(outside / "folder")
    (project / ".gitignore").write_text("conf\n")
    (project / "job.yaml").write_text("name: swapped\ncommand: [python, run.py]\n")
    submitted = fleet.cli("submit", str(project / "job.yaml"), "--json")
    assert submitted.code == 0, submitted.err
    with tarfile.open(fleet.home.code_cache_dir / f"{submitted.json()['code_hash']}.tar.gz") as tar:
        assert sorted(tar.getnames()) == [".gitignore", "job.yaml", "run.py"]
    assert "mlfleet: warning: conf is a symlinked folder; nothing under it was shipped" in submitted.err


def test_a_shipped_workdir_keeps_its_inside_symlinks_on_the_node(ssh_fleet) -> None:  # noqa: ANN001 - SshFleet
    fleet = ssh_fleet.fleet
    ssh_fleet.add("node-a")
    ssh_fleet.wait_up("node-a")
    outside = _outside(fleet)
    project = _project(fleet, outside, git=True)
    (project / "train.py").write_text(
        "import os\nfrom lib import model\nprint('weights', model.WEIGHTS)\n"
        "print('links', sorted(n for n in os.listdir('.') if os.path.islink(n)))\n"
        "print('same', os.path.realpath('src/same.py') == os.path.realpath('train.py'))\n")
    (project / "job.yaml").write_text("name: shipped\ncommand: [python, train.py]\nconstraints: {hosts: [node-a]}\n")
    job_id = fleet.cli("submit", str(project / "job.yaml"), check=True).out.strip()
    assert fleet.wait_state(job_id, {"succeeded", "failed"})["state"] == "succeeded"
    out = fleet.cli("jobs", "logs", job_id).out
    assert out.splitlines() == ["weights 3", "links ['lib']", "same True"]
    code = ssh_fleet.state_dir("node-a") / "code"
    assert not any(SECRET.encode() in p.read_bytes() for p in code.rglob("*") if p.is_file() and not p.is_symlink())


# ------------------------------------------------------------- hostile archives on the node

def _tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, body in members:
            if body is not None:
                info.size = len(body)
            tar.addfile(info, io.BytesIO(body) if body is not None else None)
    return buffer.getvalue()


def _file(name: str, body: bytes = b"pwned\n") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), body


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _special(name: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


def _unpack_on_agent(fleet: Fleet, data: bytes) -> tuple[str, dict | MlfleetError]:
    """Upload ``data`` as the controller would (to the incoming path the agent names) and ask it to unpack."""
    sha = hashlib.sha256(data).hexdigest()

    async def go() -> dict | MlfleetError:
        reader, writer = await asyncio.open_unix_connection(str(fleet.home.local_agent_socket))
        peer = Peer(reader, writer, name="agent")
        peer.start()
        try:
            await peer.request("hello", protocol=PROTOCOL_VERSION, role="controller")
            status = await peer.request("code_status", sha256=sha)
            Path(status["incoming"]).write_bytes(data)
            try:
                return await peer.request("code_unpack", sha256=sha)
            except MlfleetError as exc:
                return exc
        finally:
            await peer.close()

    return sha, asyncio.run(go())


HOSTILE = {
    "dot-dot": ([_file("ok.py", b"x"), _file("../escaped.txt")], "climbs out with '..'"),
    "absolute": ([_file("{victim}/absolute.txt")], "absolute name"),
    "symlink-out-then-write": ([_link("out", "{victim}"), _file("out/through.txt")], "leads outside it"),
    "relative-symlink-out-then-write": ([_link("up", "../../../.."), _file("up/through.txt")], "leads outside it"),
    "symlink-chain": ([_link("here", "."), _link("up", "here/.."), _file("up/through.txt")], "over another entry"),
    "symlink-chain-alone": ([_link("here", "."), _link("up", "here/..")], "leads outside it"),
    "file-then-symlink": ([_file("a/b.txt"), _link("a", "c")], "over another entry"),
    "file-then-symlink-out": ([_file("a/b.txt"), _link("a", "{victim}")], "leads outside it"),
    "hardlink-outside": ([_link("passwd", "/etc/passwd", tarfile.LNKTYPE)], "hard link"),
    "hardlink-inside": ([_file("a.txt"), _link("b.txt", "a.txt", tarfile.LNKTYPE)], "hard link"),
    "fifo": ([_special("pipe", tarfile.FIFOTYPE)], "neither a file, a folder nor a symlink"),
    "device": ([_special("null", tarfile.CHRTYPE)], "neither a file, a folder nor a symlink"),
    "twice": ([_file("a.txt", b"1"), _file("a.txt", b"2")], "twice"),
}


def test_a_hostile_archive_is_refused_and_writes_nothing_outside(fleet: Fleet) -> None:
    fleet.cli("controller", "start", check=True)
    fleet.wait_for(lambda: fleet.home.local_agent_socket.exists(), what="the local agent")
    code = fleet.home.local_agent_dir / "code"
    planted = {"escaped.txt", "through.txt", "absolute.txt", "passwd", "pipe", "null"}
    for case, (entries, expected) in HOSTILE.items():
        victim = fleet.root / f"victim-{case}"
        victim.mkdir()
        members = []
        for info, body in entries:
            info.name = info.name.replace("{victim}", str(victim))
            info.linkname = info.linkname.replace("{victim}", str(victim))
            members.append((info, body))
        sha, answer = _unpack_on_agent(fleet, _tar(*members))

        assert isinstance(answer, MlfleetError), (case, answer)
        message = str(answer)
        assert expected in message and message.count("\n") == 0 and "Traceback" not in message, (case, message)
        assert message.startswith(f"snapshot {sha[:12]} ") and message.endswith("; it was not unpacked"), message
        assert not (code / sha).exists() and not list(code.glob(".unpack-*")), case
        assert not (code / ".incoming" / f"{sha}.tar.gz").exists(), case
        assert list(victim.iterdir()) == [], case
        assert [p for p in fleet.root.rglob("*") if p.name in planted] == [], case
        assert [p for p in fleet.root.parent.iterdir() if p.name in planted] == [], case


def test_a_well_formed_archive_with_inside_symlinks_unpacks(fleet: Fleet) -> None:
    fleet.cli("controller", "start", check=True)
    fleet.wait_for(lambda: fleet.home.local_agent_socket.exists(), what="the local agent")
    sha, answer = _unpack_on_agent(fleet, _tar(_file("src/model.py", b"W = 1\n"), _link("lib", "src"),
                                               _link("src/again.py", "../src/model.py"), _link("self", ".")))
    assert not isinstance(answer, MlfleetError), answer
    tree = Path(answer["path"])
    assert (tree / "lib" / "model.py").read_bytes() == b"W = 1\n"
    assert (tree / "src" / "again.py").read_bytes() == b"W = 1\n"


def test_a_workdir_holding_the_mlfleet_home_never_ships_it_and_the_store_stays_locked(tmp_path: Path) -> None:
    """MLFLEET_HOME kept inside the project: the store, keys and logs stay home, and DuckDB keeps its file lock.

    Reading the live mlfleet.duckdb into a snapshot closed a descriptor of it in
    the controller, which dropped DuckDB's lock: any other process could then
    open the store for writing beside the controller.
    """
    import duckdb

    project = Path(tempfile.mkdtemp(prefix="mlp", dir="/tmp"))
    fleet = Fleet(project / "h")
    fleet.root.mkdir()
    try:
        (project / "train.py").write_text("import os\nprint(sorted(os.listdir('.')))\n")
        (project / "job.yaml").write_text("name: homebound\ncommand: [python, train.py]\n")
        fleet.cli("controller", "start", check=True)
        subprocess.run([str(Path(sys.executable).with_name("mlfleet")), "secrets", "set", "canary"], env=fleet.env,
                       input="a-canary-value-never-shipped\n", text=True, check=True, capture_output=True)
        assert fleet.home.secrets_file.exists() and fleet.home.audit_head_file.exists()
        answer = fleet.cli_json("submit", str(project / "job.yaml"))
        said = next(s for s in answer["code_skipped"] if "mlfleet's own" in s)
        # the secret store and the audit chain's head file stay home too (the job lists only the project's files)
        assert "h/mlfleet.duckdb" in said and "h/logs" in said and "never shipped" in said, said
        assert fleet.wait_state(answer["job_id"], {"succeeded", "failed"})["state"] == "succeeded"
        assert fleet.cli("jobs", "logs", answer["job_id"]).out.strip() == "['job.yaml', 'train.py']"
        with pytest.raises(duckdb.IOException, match="lock"):
            duckdb.connect(str(fleet.home.db_path)).close()
        home_job = fleet.cli_json("submit", str(fleet.write_spec("in-home", "name: in-home\nworkdir: ..\n"
                                                                 "command: [python, -c, 'import os; print(os.listdir())']\n")))
        assert fleet.wait_state(home_job["job_id"], {"succeeded", "failed"})["state"] == "succeeded"
        assert "mlfleet.duckdb" not in fleet.cli("jobs", "logs", home_job["job_id"]).out
    finally:
        fleet.kill_everything()
        shutil.rmtree(project, ignore_errors=True)


POISONER = """import hashlib, json, os, pathlib
here = pathlib.Path.cwd()
code = here.parent.parent.parent / "code"
sha = json.loads((here.parent / "launch.json").read_text())["code_hash"]
print("ran:", hashlib.sha256(pathlib.Path(__file__).read_bytes()).hexdigest())
for target in (code / sha / "train.py", code / f"{sha}.tar.gz"):  # the shared tree, and the archive itself
    try:
        os.chmod(target, 0o600)
        with open(target, "ab") as f:
            f.write(b"\\nprint('POISONED')\\n")
    except OSError as exc:
        print("could not poison", target.name, exc)
"""


def test_a_job_that_writes_into_the_agents_code_cache_cannot_change_what_the_next_run_starts_from(fleet: Fleet) -> None:
    """The same code submitted twice: whatever the first job does to the cache, the second runs the snapshot."""
    project = fleet.root / "specs" / "poison"
    project.mkdir(parents=True)
    (project / "train.py").write_text(POISONER)
    spec = fleet.write_spec("poison", "name: poison\nworkdir: poison\ncommand: [python, train.py]\n")
    first = fleet.cli_json("submit", str(spec))
    assert fleet.wait_state(first["job_id"], {"succeeded", "failed"})["state"] == "succeeded"
    second = fleet.cli_json("submit", str(spec))
    assert second["code_hash"] == first["code_hash"]
    done = fleet.wait_state(second["job_id"], {"succeeded", "failed"}, timeout=90)
    out = fleet.cli("jobs", "logs", second["job_id"]).out
    assert done["state"] == "succeeded" and "POISONED" not in out, out
    expected = hashlib.sha256(POISONER.encode()).hexdigest()
    assert f"ran: {expected}" in out  # byte for byte the snapshot whose hash the run records
    assert fleet.cli_json("runs", "show", done["run_id"])["code_hash"] == first["code_hash"]


def test_one_workdir_snapshotted_by_many_threads_at_once_is_one_archive(tmp_path: Path) -> None:
    """Fifty submits of one workdir at once snapshot it in threads; they once shared a temp name and collided."""
    from concurrent.futures import ThreadPoolExecutor

    from mlfleet.core.jobs.snapshot import snapshot

    work = tmp_path / "work"
    work.mkdir()
    (work / "train.py").write_text("print('hi')\n" * 1000)
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(16) as pool:
        snaps = list(pool.map(lambda _: snapshot(work, cache), range(64)))
    assert len({s.sha256 for s in snaps}) == 1
    assert sorted(p.name for p in cache.iterdir()) == [f"{snaps[0].sha256}.tar.gz"]
