"""A team controller never reads another user's files: the caller packs and sends its code, and only a snapshot is kept.

The controller runs as the test's user; alice is a second real OS user
(``useradd``, one per xdist worker) whose client packs her workdir itself
(core/jobs/code_send.py) and uploads it (core/jobs/code_upload.py). Her
workdir lives on a tmpfs mounted in a mount namespace of her client alone:
the path does not exist where the controller runs, so a job that runs her
code got it from the upload, not from her disk. Every upload is hostile
until checked: what is not a snapshot is refused in one sentence and leaves
nothing in the controller's code cache.

The controller's socket is 0600; the test opens its folder and the socket to
alice, standing in for the team socket (``controller serve --team``) that
gives a group access, and her client (tests/code_upload_client.py) runs the
CLI's own submit functions on it. The real CLI over SSH to the real team
socket takes the same path (tests/test_team_socket.py, tests/test_team_story.py:
their users' submits now send their code).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import pwd
import subprocess
import tarfile
import zlib
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

from conftest import Fleet
from team_users import TeamUsers
from mlfleet.core.base.errors import RemoteError
from mlfleet.core.base.paths import Home
from mlfleet.core.base.protocol import open_unix_peer
from mlfleet.core.controller.client import ControllerClient
from mlfleet.core.jobs.archive_check import UnsafeArchive, check_archive, leads_outside
from mlfleet.core.jobs.code_send import must_send_own_code
from mlfleet.core.jobs.snapshot import MAX_SNAPSHOT_BYTES, snapshot

DRIVER = Path(__file__).with_name("code_upload_client.py")


@dataclass(frozen=True)
class Other:
    pw: pwd.struct_passwd
    python: str  # an interpreter with this checkout's packages that this user may run (tests/team_users.py)


@pytest.fixture
def alice() -> Iterator[Other]:
    """A second OS user with a home of her own (tests/team_users.py: unique per worker, removed afterwards)."""
    team = TeamUsers()
    try:
        yield Other(pwd.getpwnam(team.user().name), team.python)
    finally:
        team.remove_all()


def _started(fleet: Fleet) -> Path:
    """The controller running, its socket opened to other users (the team socket's stand-in); its path."""
    fleet.cli("controller", "start", check=True)
    sock = fleet.home.controller_socket
    fleet.wait_for(sock.exists, what="the controller's socket")
    for folder in (fleet.root, fleet.home.run_dir):
        folder.chmod(0o711)
    sock.chmod(0o666)
    return sock


def _env(user: pwd.struct_passwd) -> dict[str, str]:
    return {"HOME": user.pw_dir, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8",
            "MLFLEET_HOME": f"{user.pw_dir}/mlf", "PYTHONDONTWRITEBYTECODE": "1"}


def _as(other: Other, *args: str, timeout: float = 240) -> dict[str, Any]:
    """The driver as ``other`` (subprocess user=/group=, no extra groups), its JSON answer."""
    user = other.pw
    proc = subprocess.run([other.python, str(DRIVER), *args], user=user.pw_uid, group=user.pw_gid, extra_groups=[],
                          env=_env(user), cwd=user.pw_dir, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _as_in_own_mounts(other: Other, mount: Path, *args: str, timeout: float = 240) -> dict[str, Any]:
    """The driver as ``other`` in a mount namespace of its own, with a 0700 tmpfs of theirs at ``mount``."""
    user = other.pw
    mount_then_drop = 'mount -t tmpfs -o "mode=0700,uid=$1,gid=$2" none "$0" && shift 2 && exec "$@"'
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", mount_then_drop, str(mount),
           str(user.pw_uid), str(user.pw_gid), "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
           "--clear-groups", "--", other.python, str(DRIVER), *args]
    proc = subprocess.run(cmd, env=_env(user), cwd=user.pw_dir, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _cache_state(fleet: Fleet) -> tuple[set[str], list[str]]:
    cache = fleet.home.code_cache_dir
    return {p.name for p in cache.glob("*.tar.gz")}, sorted(p.name for p in (cache / ".incoming").iterdir())


def test_another_users_job_runs_the_code_she_sent_and_the_controller_never_reads_her_workdir(
        fleet: Fleet, alice: Other) -> None:
    sock = _started(fleet)
    mount = fleet.root.with_name(fleet.root.name + "-alice-mnt")
    mount.mkdir()
    try:
        workdir = mount / "project"
        story = _as_in_own_mounts(alice, mount, "story", str(sock), str(workdir), "trained-by-alice")
        assert "ok" in story, story
        assert story["uids"] == [alice.pw.pw_uid] * 3 and int(story["cap_eff"], 16) == 0  # her, unprivileged
        story = story["ok"]
        assert not workdir.exists()  # where the controller runs, her workdir is not there at all

        bare = story["bare"]  # the submit an older client sends: a path, no code
        assert bare["kind"] == "PermissionDeniedError"
        assert f"{alice.pw.pw_name} submitted a workdir path" in bare["error"]
        assert "does not read other users' files" in bare["error"] and "must pack and send its code" in bare["error"]

        first, second, again = story["first"], story["second"], story["again"]
        assert first["job"]["state"] == "succeeded", first["job"]
        assert "trained-by-alice" in first["stdout"]
        sent = first["sent"]["sha256"]
        assert first["answer"]["code_hash"] == sent and first["answer"]["code_files"] == 3
        assert first["calls"]["code_upload_begin"] == 1 and first["calls"]["code_upload_end"] == 1
        assert first["calls"]["code_upload_chunk"] >= 1
        assert first["sent"]["lineage"]["git_commit"]  # her repository's commit, computed by her client

        # The same code again: asked about, not sent.
        assert second["calls"].get("code_has") == 1 and "code_upload_begin" not in second["calls"]
        assert second["answer"]["job_id"] != first["answer"]["job_id"] and second["answer"]["code_hash"] == sent
        assert second["job"]["state"] == "succeeded" and "trained-by-alice" in second["stdout"]
        # The first key again (a retry): the same job, nothing sent, nothing queued.
        assert again["answer"]["existing"] is True and again["answer"]["job_id"] == first["answer"]["job_id"]
        assert "code_upload_begin" not in again["calls"]
        # A sweep from the same workdir: its children run the same code, sent once (core/jobs/group.py).
        sweep = story["sweep"]
        assert sweep["answer"]["sweep_id"] and sweep["answer"]["code_hash"] == sent
        assert "code_upload_begin" not in sweep["calls"]
        assert [j["state"] for j in sweep["jobs"]] == ["succeeded", "succeeded"]
        assert all("trained-by-alice" in j["stdout"] for j in sweep["jobs"])

        archives, incoming = _cache_state(fleet)
        assert archives == {f"{sent}.tar.gz"} and incoming == []
        assert (fleet.home.code_cache_dir / ".senders" / sent).read_text().split() == [alice.pw.pw_name]
        run = fleet.cli_json("runs", "show", first["job"]["run_id"])
        assert json.dumps(run).count(first["sent"]["lineage"]["git_commit"]) >= 1  # her lineage is the run's
    finally:
        mount.rmdir()


def _targz(entries: list[tuple[tarfile.TarInfo, bytes | None]], trailing: bytes = b"") -> bytes:
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(tar_bytes.getvalue() + trailing, mtime=0)


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", data: bytes | None = None) -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info, (data if data is not None else (b"x = 1\n" if kind == tarfile.REGTYPE else None))


def _zeros_gzip(tar_part: bytes, zeros: int) -> bytes:
    """A small tar followed by ``zeros`` zero bytes, compressed as one stream (without holding them in memory)."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [z.compress(tar_part)]
    block = bytes(1 << 20)
    for _ in range(zeros >> 20):
        out.append(z.compress(block))
    out.append(z.flush())
    return b"".join(out)


def _small_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info, data = _entry("train.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


HOSTILE = {
    "path traversal": (_targz([_entry("../escape.py")]), "climbs out with '..'"),
    "absolute name": (_targz([_entry("/etc/cron.d/evil")]), "absolute name"),
    "symlink out": (_targz([_entry("keys", tarfile.SYMTYPE, "../../root/.ssh")]), "leads outside it"),
    "absolute symlink": (_targz([_entry("keys", tarfile.SYMTYPE, "/root/.ssh")]), "leads outside it"),
    "symlink chain out": (_targz([_entry("here", tarfile.SYMTYPE, "."),
                                  _entry("up", tarfile.SYMTYPE, "here/here/here/..")]), "leads outside it or loops"),
    "write through a symlink": (_targz([_entry("dir", tarfile.SYMTYPE, "."), _entry("dir/x.py")]),
                                "under the symlink 'dir'"),
    "device": (_targz([_entry("null", tarfile.CHRTYPE)]), "a device"),
    "fifo": (_targz([_entry("pipe", tarfile.FIFOTYPE)]), "a FIFO"),
    "hard link": (_targz([_entry("a.py"), _entry("b.py", tarfile.LNKTYPE, "/etc/shadow")]), "hard link"),
    "twice": (_targz([_entry("a.py"), _entry("a.py")]), "holds 'a.py' twice"),
    "not gzip": (b"plain text, not an archive" * 10, "not a whole gzip tar"),
    "truncated gzip": (_targz([_entry("a.py", data=os.urandom(50_000))])[:30_000], "not a whole gzip tar"),
    "compression bomb": (_zeros_gzip(_small_tar(), 64 << 20), "after the end of its tar"),
}


def _client(sock: Path) -> ControllerClient:
    async def make() -> ControllerClient:
        peer = await open_unix_peer(str(sock), "the controller")
        await peer.hello("client")
        return ControllerClient(peer, Home.from_env())
    return make()  # type: ignore[return-value]


async def _upload_bytes(client: ControllerClient, data: bytes, claim: str | None = None,
                        chunk: int = 64 * 1024) -> dict[str, Any]:
    sha = claim or hashlib.sha256(data).hexdigest()
    begun = await client.call("code_upload_begin", sha256=sha, size=len(data))
    for offset in range(0, len(data), chunk):
        await client.call("code_upload_chunk", upload=begun["upload"], offset=offset, data=data[offset:offset + chunk])
    return await client.call("code_upload_end", upload=begun["upload"])


def test_hostile_archives_are_refused_with_a_sentence_and_leave_nothing_in_the_cache(fleet: Fleet) -> None:
    leftover = fleet.home.code_cache_dir / ".incoming" / "u0.part"  # a controller stopped mid-upload left it
    leftover.parent.mkdir(parents=True, mode=0o700)
    leftover.write_bytes(b"half an archive")
    sock = _started(fleet)
    assert not leftover.exists()  # cleared at start

    async def story() -> dict[str, str]:
        refused = {}
        client = await _client(sock)
        try:
            for case, (data, _words) in HOSTILE.items():
                with pytest.raises(RemoteError) as caught:
                    await _upload_bytes(client, data)
                refused[case] = str(caught.value)
            good = _targz([_entry("train.py")])
            with pytest.raises(RemoteError) as caught:  # a hash that is not the bytes'
                await _upload_bytes(client, good, claim="0" * 64)
            refused["hash mismatch"] = str(caught.value)
            with pytest.raises(RemoteError) as caught:  # more than a snapshot may be, claimed up front
                await client.call("code_upload_begin", sha256="1" * 64, size=MAX_SNAPSHOT_BYTES + 1)
            refused["oversize"] = str(caught.value)
            with pytest.raises(RemoteError) as caught:  # a header that claims more content than a snapshot holds
                await _upload_bytes(client, _huge_claim())
            refused["oversize content"] = str(caught.value)
            begun = await client.call("code_upload_begin", sha256=hashlib.sha256(good).hexdigest(), size=len(good))
            await client.call("code_upload_chunk", upload=begun["upload"], offset=0, data=good[:10])
            with pytest.raises(RemoteError) as caught:  # ends before the bytes it claimed
                await client.call("code_upload_end", upload=begun["upload"])
            refused["truncated upload"] = str(caught.value)
            begun = await client.call("code_upload_begin", sha256=hashlib.sha256(good).hexdigest(), size=len(good))
            with pytest.raises(RemoteError) as caught:  # a gap
                await client.call("code_upload_chunk", upload=begun["upload"], offset=5, data=good[5:])
            refused["out of order"] = str(caught.value)
            with pytest.raises(RemoteError) as caught:  # and that upload is gone
                await client.call("code_upload_chunk", upload=begun["upload"], offset=0, data=good)
            refused["dropped"] = str(caught.value)
        finally:
            await client.close()
        for _ in range(2):  # per user: at most 4 uploads open, and 256 MiB claimed in them (each connection's dropped)
            client = await _client(sock)
            try:
                if "too many" not in refused:
                    for i in range(4):
                        await client.call("code_upload_begin", sha256=f"{i}" * 64, size=10)
                    with pytest.raises(RemoteError) as caught:
                        await client.call("code_upload_begin", sha256="5" * 64, size=10)
                    refused["too many"] = str(caught.value)
                else:
                    await client.call("code_upload_begin", sha256="6" * 64, size=MAX_SNAPSHOT_BYTES)
                    with pytest.raises(RemoteError) as caught:
                        await client.call("code_upload_begin", sha256="7" * 64, size=1)
                    refused["too many bytes"] = str(caught.value)
            finally:
                await client.close()
            for _ in range(50):  # the controller drops a closed connection's uploads as it sees the close
                if not _cache_state(fleet)[1]:
                    break
                await asyncio.sleep(0.1)
        return refused

    refused = asyncio.run(story())
    for case, (_data, words) in HOSTILE.items():
        assert "is not a snapshot" in refused[case] and words in refused[case], (case, refused[case])
        assert "\n" not in refused[case]
    assert "hashes to" in refused["hash mismatch"] and "nothing was kept" in refused["hash mismatch"]
    assert "size" in refused["oversize"] and str(MAX_SNAPSHOT_BYTES) in refused["oversize"]
    assert "MiB of files" in refused["oversize content"]
    assert "ended after 10 of its" in refused["truncated upload"]
    assert "at byte 5 where byte 0 was due" in refused["out of order"]
    assert "no code upload" in refused["dropped"]
    assert "already has 4 code uploads in progress" in refused["too many"]
    assert "would hold more than 256 MiB" in refused["too many bytes"]
    fleet.wait_for(lambda: _cache_state(fleet) == (set(), []), timeout=5, what="the partial uploads to go")
    assert not list((fleet.home.code_cache_dir / ".senders").iterdir())


def _huge_claim() -> bytes:
    """A tar header that claims a 300 MiB file (its body never comes)."""
    info = tarfile.TarInfo("big.bin")
    info.size = 300 * 1024 * 1024
    return gzip.compress(info.tobuf(tarfile.PAX_FORMAT), mtime=0)


def test_another_user_cannot_add_to_an_upload_nor_use_code_she_did_not_send(fleet: Fleet,
                                                                             alice: Other) -> None:
    sock = _started(fleet)
    project = fleet.root.with_name(fleet.root.name + "-alice-project")
    project.mkdir()
    (project / "job.yaml").write_text("name: borrowed\ncommand: [python, train.py]\n")
    os.chown(project, alice.pw.pw_uid, alice.pw.pw_gid)
    os.chown(project / "job.yaml", alice.pw.pw_uid, alice.pw.pw_gid)
    try:
        async def story() -> tuple[dict, dict, dict, dict, dict, set[str], list[str]]:
            client = await _client(sock)
            try:
                good = _targz([_entry("train.py", data=b"print('the controller user code')\n")])
                sha = hashlib.sha256(good).hexdigest()
                begun = await client.call("code_upload_begin", sha256=sha, size=len(good))
                await client.call("code_upload_chunk", upload=begun["upload"], offset=0, data=good[:20])
                intruder = await asyncio.to_thread(_as, alice, "chunk", str(sock), begun["upload"])
                await client.call("code_upload_chunk", upload=begun["upload"], offset=20, data=good[20:])
                done = await client.call("code_upload_end", upload=begun["upload"])  # whole, and only our bytes
                borrowed = await asyncio.to_thread(_as, alice, "submit-code", str(sock), str(project), sha)
                has = await asyncio.to_thread(_as, alice, "submit-code", str(sock), str(project), "2" * 64)
                deploy = await asyncio.to_thread(_as, alice, "deploy-apply", str(sock), "/home/someone-else/project")
                # Mid-upload, the connection closes: its partial file goes with it.
                half = await _client(sock)
                begun = await half.call("code_upload_begin", sha256="3" * 64, size=1000)
                await half.call("code_upload_chunk", upload=begun["upload"], offset=0, data=b"x" * 100)
                during = _cache_state(fleet)[1]
                await half.close()
                await asyncio.sleep(0.5)
                return intruder, done, borrowed, has, deploy, set(during), _cache_state(fleet)[1]
            finally:
                await client.close()

        intruder, done, borrowed, unknown, deploy, during, after = asyncio.run(story())
        assert intruder["kind"] == "PermissionDeniedError", intruder
        assert intruder["uids"] == [alice.pw.pw_uid] * 3 and int(intruder["cap_eff"], 16) == 0
        assert f"is not {alice.pw.pw_name}'s on this connection" in intruder["error"]
        assert done["files"] == 1
        assert borrowed["kind"] == "NotFoundError" and f"was not sent by {alice.pw.pw_name}" in borrowed["error"]
        assert unknown["kind"] == "NotFoundError"
        # A deployment's replicas are packed by the controller from the workdir: from another user, refused.
        assert deploy["kind"] == "PermissionDeniedError" and "does not read other users' files" in deploy["error"]
        assert len(during) == 1 and after == []
    finally:
        for p in (project / "job.yaml", project):
            p.unlink() if p.is_file() else p.rmdir()


def test_a_snapshot_passes_the_check_and_the_check_follows_links_as_the_node_would(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    (work / "src" / "model.py").write_text("W = 1\n")
    (work / "train.py").write_text("print(1)\n")
    (work / "lib").symlink_to("src")
    snap = snapshot(work, tmp_path / "cache")
    facts = check_archive(snap.path)
    assert (facts.files, facts.size) == (snap.files, snap.size) == (2, 15)

    links = {("here",): ".", ("a", "up"): "..", ("loop",): "loop"}
    assert not leads_outside(("lib",), "src", {})
    assert not leads_outside(("a", "up"), "..", links)  # a/.. is the root: inside
    assert leads_outside(("x",), "here/here/..", links)
    assert leads_outside(("y",), "a/up/..", links)
    assert leads_outside(("loop",), "loop", links)
    with pytest.raises(UnsafeArchive):
        bad = tmp_path / "bad.tar.gz"
        bad.write_bytes(HOSTILE["symlink chain out"][0])
        check_archive(bad)


def test_who_packs_the_code() -> None:
    assert must_send_own_code({"owner": "carol"}, "alice")
    assert not must_send_own_code({"owner": "alice"}, "alice")
    assert not must_send_own_code({}, "alice")  # a controller older than team mode: one's own
    assert must_send_own_code({"owner": "alice"}, "alice", remote=True)  # over SSH it cannot see this machine


@pytest.mark.parametrize("case", sorted(set(HOSTILE) - {"compression bomb"}))
def test_the_node_refuses_the_same_archives_and_writes_nothing_outside_its_cache(tmp_path: Path, case: str) -> None:
    """The node checks again (agents/codecache.py): an archive that reached it by another way escapes nowhere.

    (The bomb is left out here: the node stops reading at the tar's end, so zeros after it cost it nothing.)
    """
    from mlfleet.agents.codecache import CodeCache
    from mlfleet.core.base.errors import UsageError

    state = tmp_path / "state" / "deep"
    state.mkdir(parents=True)
    cache = CodeCache(state)
    data = HOSTILE[case][0]
    sha = hashlib.sha256(data).hexdigest()
    (cache.incoming / f"{sha}.tar.gz").write_bytes(data)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(UsageError) as caught:
        cache.unpack(sha)
    assert sha[:12] in str(caught.value)
    after = sorted(str(p) for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before] == []  # no tree, no file beside or above it
    assert not cache.path(sha).exists()
