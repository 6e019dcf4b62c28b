"""A pipeline step's outputs travel from the host its job ran on into the controller's content-addressed store.

Real parts: a real controller and local agent (the ``fleet`` fixture) run
real jobs that write a file and a folder; the test speaks to the agent over
its socket as the controller does (``outputs_pack``, ``outputs_read``) and
collects into a real OutputStore. What is stored must hash exactly as
outputs.hash_outputs hashes the run's own work folder, and nothing hostile
(links, FIFOs, ``..``, a tampered tar) gets in.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tarfile
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import Fleet
from mlfleet.agents.outputs import pack_outputs
from mlfleet.agents.rundir import RunDir, write_json_atomic
from mlfleet.core.base.errors import MlfleetError, NotFoundError, UsageError
from mlfleet.core.base.hello import PROTOCOL_VERSION
from mlfleet.core.base.protocol import Peer
from mlfleet.core.base.tree_hash import tree_digest
from mlfleet.core.pipelines.output_store import OutputStore, OutputStoreError
from mlfleet.core.pipelines.outputs import hash_outputs, verify_outputs
from mlfleet.core.pipelines.state import OutputDigest
from mlfleet.core.pipelines.transfer import collect_outputs

WRITER = """\
import os
os.makedirs("out/tables/sub", exist_ok=True)
with open("out/model.bin", "wb") as fh:
    fh.write(bytes(range(256)) * 4099)
with open("out/tables/a.csv", "w") as fh:
    fh.write("x,y\\n1,2\\n")
with open("out/tables/sub/b.csv", "w") as fh:
    fh.write("z\\n3\\n")
os.makedirs("out/tables/empty", exist_ok=True)
"""

HOSTILE = """\
import os
os.makedirs("out/folder", exist_ok=True)
open("out/folder/ok.txt", "w").write("ok")
os.symlink("/etc/passwd", "out/folder/passwd")
os.symlink("/etc", "out/etc")
os.mkfifo("out/pipe")
os.makedirs("out/deep", exist_ok=True)
os.mkfifo("out/deep/pipe")
"""

BIG = """\
import os
os.makedirs("out/many", exist_ok=True)
for i in range(2000):
    with open(f"out/many/f{i:04d}.txt", "w") as fh:
        fh.write(f"row {i}\\n")
with open("out/big.bin", "wb") as fh:
    block = os.urandom(1 << 20)
    for i in range(50):
        fh.write(bytes([i]) + block[1:])
"""


class CountingLink:
    """The agent's real connection, with a count of each method asked: how to see what crossed the wire."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.asked: dict[str, int] = {}

    async def request(self, method: str, request_timeout: float = 60.0, **params: Any) -> Any:
        self.asked[method] = self.asked.get(method, 0) + 1
        return await self.peer.request(method, request_timeout=request_timeout, **params)


async def _with_agent(fleet: Fleet, work) -> Any:
    reader, writer = await asyncio.open_unix_connection(str(fleet.home.local_agent_socket))
    peer = Peer(reader, writer, name="agent")
    peer.start()
    try:
        await peer.request("hello", protocol=PROTOCOL_VERSION, role="controller")
        return await work(CountingLink(peer))
    finally:
        await peer.close()


def _run_job(fleet: Fleet, name: str, script: str, timeout: float = 120) -> tuple[str, Path]:
    """Submit a job running ``script`` and wait for it; its run id and the work folder it ran in."""
    (fleet.root / "specs").mkdir(exist_ok=True)
    (fleet.root / "specs" / f"{name}.py").write_text(script)
    done = fleet.cli("submit", str(fleet.write_spec(name, f"name: {name}\ncommand: [python, {name}.py]\n")),
                     "--wait", "--json", timeout=timeout)
    assert done.code == 0, done.out + done.err
    run_id = fleet.cli_json("runs", "show", done.json()["run_id"])["run_id"]
    return run_id, fleet.home.local_agent_dir / "runs" / run_id / "work"


def _store(fleet: Fleet) -> OutputStore:
    return OutputStore(fleet.home.data_dir / "pipeline-outputs")


def test_a_jobs_file_and_folder_outputs_are_packed_collected_and_hash_as_in_its_workdir(fleet: Fleet) -> None:
    run_id, work = _run_job(fleet, "writer", WRITER)
    declared = {"model": "out/model.bin", "tables": "out/tables"}
    store = _store(fleet)

    async def collect(link: CountingLink) -> tuple[dict, dict, dict, dict]:
        first = await collect_outputs(link, run_id, declared, store, "local")
        asked_first = dict(link.asked)
        again = await collect_outputs(link, run_id, declared, store, "local")
        return first, again, asked_first, dict(link.asked)

    first, again, asked_first, asked_both = asyncio.run(_with_agent(fleet, collect))
    expected = hash_outputs(work, declared)
    for name in declared:
        got = first[name]
        assert (got.sha256, got.size, got.files) == (expected[name].sha256, expected[name].size, expected[name].files)
        assert got.host == "local" and got.stored == str(store.path_of(got.sha256, declared[name]))
    assert first["tables"].files == 2 and first["model"].files is None
    stored_model = Path(first["model"].stored)
    assert stored_model.read_bytes() == (work / "out" / "model.bin").read_bytes()
    assert stored_model == store.root / first["model"].sha256 / "model.bin"
    stored_tables = Path(first["tables"].stored)
    assert (stored_tables / "sub" / "b.csv").read_text() == "z\n3\n"
    assert not (stored_tables / "empty").exists()  # an empty folder inside adds nothing to the hash: not carried
    assert verify_outputs(first) == []  # the store's copy is what the service checks on a cache hit
    # one pack, one read per (small) tar; asked again: packed answer reused, nothing read again
    assert asked_first == {"outputs_pack": 1, "outputs_read": 2}
    assert again == first and asked_both == {"outputs_pack": 2, "outputs_read": 2}
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]  # no temp file or folder left


def test_packing_is_idempotent_and_reading_refuses_what_was_not_packed(fleet: Fleet) -> None:
    run_id, work = _run_job(fleet, "writer", WRITER)

    async def ask(link: CountingLink) -> dict:
        peer = link.peer
        first = await peer.request("outputs_pack", run_id=run_id, outputs={"model": "out/model.bin"})
        tar_path = fleet.home.local_agent_dir / "runs" / run_id / "outputs" / "model.tar"
        mtime = tar_path.stat().st_mtime_ns
        second = await peer.request("outputs_pack", run_id=run_id, outputs={"model": "out/model.bin"})
        assert second == first and tar_path.stat().st_mtime_ns == mtime  # not packed again
        chunk = await peer.request("outputs_read", run_id=run_id, name="model", offset=0, max_bytes=1000)
        assert isinstance(chunk["data"], bytes) and chunk["end"] == 1000 and not chunk["eof"]
        assert chunk["data"] == tar_path.read_bytes()[:1000]
        tail = await peer.request("outputs_read", run_id=run_id, name="model", offset=first["model"]["archive_size"])
        assert tail["data"] == b"" and tail["eof"]
        errors = {}
        for label, method, params in [
            ("unknown run", "outputs_pack", {"run_id": "no-such-run", "outputs": {"m": "out/model.bin"}}),
            ("not packed", "outputs_read", {"run_id": run_id, "name": "tables", "offset": 0}),
            ("negative", "outputs_read", {"run_id": run_id, "name": "model", "offset": -1}),
            ("bad name", "outputs_pack", {"run_id": run_id, "outputs": {"../x": "out/model.bin"}}),
            ("dotdot", "outputs_pack", {"run_id": run_id, "outputs": {"m": "../../launch.json"}}),
            ("absolute", "outputs_pack", {"run_id": run_id, "outputs": {"m": "/etc/passwd"}}),
            ("missing", "outputs_pack", {"run_id": run_id, "outputs": {"m": "out/nothing.bin"}}),
        ]:
            with pytest.raises(MlfleetError) as caught:
                await peer.request(method, **params)
            errors[label] = caught.value
        return {"first": first, "errors": errors}

    got = asyncio.run(_with_agent(fleet, ask))
    model = got["first"]["model"]
    assert model["sha256"] == hashlib.sha256((work / "out" / "model.bin").read_bytes()).hexdigest()
    assert model["size"] == 256 * 4099 and model["files"] is None and model["path"] == "out/model.bin"
    said = {label: (getattr(exc, "kind", type(exc).__name__), str(exc)) for label, exc in got["errors"].items()}
    assert "is not known on this host" in said["unknown run"][1]
    assert "has no packed output 'tables'" in said["not packed"][1]
    assert "offset cannot be negative" in said["negative"][1]
    assert "invalid output name" in said["bad name"][1]
    assert "is not a path inside the workdir" in said["dotdot"][1]
    assert "is not a path inside the workdir" in said["absolute"][1]
    assert "output m (out/nothing.bin) is missing" in said["missing"][1]
    assert got["errors"]["missing"].exit_code == NotFoundError.exit_code
    assert got["errors"]["dotdot"].exit_code == UsageError.exit_code


def test_links_and_fifos_in_an_output_are_refused_with_a_sentence(fleet: Fleet) -> None:
    run_id, _ = _run_job(fleet, "hostile", HOSTILE)

    async def ask(link: CountingLink) -> dict[str, str]:
        said = {}
        for name, path in [("folder", "out/folder"), ("etc", "out/etc"), ("through", "out/etc/passwd"),
                           ("pipe", "out/pipe"), ("deep", "out/deep")]:
            with pytest.raises(MlfleetError) as caught:
                await asyncio.wait_for(link.request("outputs_pack", run_id=run_id, outputs={name: path}), 20)
            said[name] = str(caught.value)
        return said

    said = asyncio.run(_with_agent(fleet, ask))
    assert "holds a symbolic link (out/folder/passwd)" in said["folder"]
    assert "holds a symbolic link (out/etc)" in said["etc"]
    assert "is under out/etc, a symbolic link" in said["through"]
    assert "out/pipe, which is neither a file nor a folder" in said["pipe"]
    assert "out/deep/pipe, which is neither a file nor a folder" in said["deep"]
    assert not _store(fleet).root.exists() or not list(_store(fleet).root.iterdir())


def test_two_thousand_files_and_a_50_mib_file_arrive_in_chunks_with_the_right_hash(fleet: Fleet) -> None:
    run_id, work = _run_job(fleet, "big", BIG)
    declared = {"many": "out/many", "big": "out/big.bin"}
    store = _store(fleet)

    async def collect(link: CountingLink) -> tuple[dict, dict]:
        return await collect_outputs(link, run_id, declared, store, "local"), dict(link.asked)

    got, asked = asyncio.run(_with_agent(fleet, collect))
    expected = hash_outputs(work, declared)
    assert {n: (d.sha256, d.size, d.files) for n, d in got.items()} == \
        {n: (d.sha256, d.size, d.files) for n, d in expected.items()}
    assert got["many"].files == 2000 and got["big"].size == 50 << 20
    assert asked["outputs_read"] >= 13  # 50 MiB in chunks of at most 4 MiB, plus the folder's tar
    assert hashlib.sha256(Path(got["big"].stored).read_bytes()).hexdigest() == expected["big"].sha256
    assert verify_outputs(got) == []


# ------------------------------------------------------------------ the store, against tampered tars

def _packed(tmp_path: Path, build) -> tuple[RunDir, dict[str, Any]]:
    """The agent's own packing of a tree ``build`` writes, in a run folder of its shape (launch.json's workdir)."""
    work = tmp_path / "work"
    work.mkdir()
    build(work)
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    write_json_atomic(run.file("launch.json"), {"workdir": str(work)})
    return run, work


def _digest(name: str, path: str, answer: dict[str, Any]) -> OutputDigest:
    return OutputDigest(name=name, path=path, sha256=answer["sha256"], size=answer["size"], files=answer["files"])


def _tables(work: Path) -> None:
    (work / "out" / "t" / "sub").mkdir(parents=True)
    (work / "out" / "t" / "a.csv").write_text("a\n")
    (work / "out" / "t" / "sub" / "b.csv").write_text("b\n")


def test_the_store_refuses_a_tampered_tar_and_keeps_nothing(tmp_path: Path) -> None:
    run, work = _packed(tmp_path, _tables)
    answer = pack_outputs(run, {"t": "out/t"})["t"]
    digest = _digest("t", "out/t", answer)
    assert answer["sha256"] == tree_digest(work, "out/t").sha256
    tar_bytes = run.file("outputs/t.tar").read_bytes()
    tampered = tmp_path / "tampered.tar"
    tampered.write_bytes(tar_bytes.replace(b"a\n", b"A\n", 1))
    store = OutputStore(tmp_path / "store")
    with pytest.raises(OutputStoreError, match="arrived with sha256 .* not the .* its host reported"):
        store.put(digest, tampered)
    assert not store.has(digest) and not [p for p in store.root.iterdir() if p.name != digest.sha256 or
                                          list(p.iterdir())]
    kept = store.put(digest, run.file("outputs/t.tar"))
    assert kept == store.path_of(digest.sha256, "out/t") and store.has(digest)
    assert tree_digest(kept.parent, kept.name).sha256 == digest.sha256
    store.remove(digest.sha256)
    assert not store.has(digest) and not (store.root / digest.sha256).exists()


def _tar_with(tmp_path: Path, *members: tuple[str, bytes | None, bytes]) -> Path:
    """A tar holding members (name, linkname or None, data)."""
    path = tmp_path / "hostile.tar"
    with tarfile.open(path, "w") as tar:
        for name, linkname, data in members:
            info = tarfile.TarInfo(name)
            if linkname is not None:
                info.type, info.linkname = tarfile.SYMTYPE, linkname.decode()
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("members, said", [
    ([("t/../../escape", None, b"x")], "outside t"),
    ([("/etc/cron.d/x", None, b"x")], "outside t"),
    ([("t/link", b"/etc/passwd", b"")], "not a file or folder"),
    ([("other/a.csv", None, b"a\n")], "outside t"),
    ([("t/a.csv", None, b"a\n" * 1000)], "more than the"),
])
def test_the_store_refuses_links_escapes_and_more_bytes_than_reported(tmp_path: Path, members, said: str) -> None:
    digest = OutputDigest(name="t", path="out/t", sha256=hashlib.sha256(b"").hexdigest(), size=4, files=2)
    store = OutputStore(tmp_path / "store")
    with pytest.raises(OutputStoreError, match=said):
        store.put(digest, _tar_with(tmp_path, *members))
    assert not (tmp_path / "escape").exists() and not store.has(digest)
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")]


def test_two_puts_of_the_same_content_at_once_both_succeed_with_one_copy(tmp_path: Path) -> None:
    run, _ = _packed(tmp_path, _tables)
    digest = _digest("t", "out/t", pack_outputs(run, {"t": "out/t"})["t"])
    store = OutputStore(tmp_path / "store")
    results: list[Any] = []
    barrier = threading.Barrier(8)

    def put() -> None:
        barrier.wait()
        try:
            results.append(store.put(digest, run.file("outputs/t.tar")))
        except Exception as exc:  # collected: the assertion below names it
            results.append(exc)

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [store.path_of(digest.sha256, "out/t")] * 8
    assert sorted(p.name for p in store.root.iterdir()) == [digest.sha256]
    assert tree_digest(store.root / digest.sha256, "t").sha256 == digest.sha256


def test_the_agents_tar_is_deterministic(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one, _ = _packed(tmp_path / "one", _tables)
    two, work_two = _packed(tmp_path / "two", _tables)
    os.utime(work_two / "out" / "t" / "a.csv", (1, 1))  # another time, the same content
    pack_outputs(one, {"t": "out/t"})
    pack_outputs(two, {"t": "out/t"})
    assert one.file("outputs/t.tar").read_bytes() == two.file("outputs/t.tar").read_bytes()


def test_a_run_still_going_is_not_packed(fleet: Fleet) -> None:
    submitted = fleet.cli("submit", str(fleet.write_spec("slow", "name: slow\ncommand: [sleep, '30']\n")), "--json")
    assert submitted.code == 0, submitted.out + submitted.err
    job = fleet.wait_state(submitted.json()["job_id"], {"running"})

    async def ask(link: CountingLink) -> str:
        with pytest.raises(MlfleetError) as caught:
            await link.request("outputs_pack", run_id=job["run_id"], outputs={"m": "model.bin"})
        return str(caught.value)

    try:
        assert "has not ended; its outputs are packed once it has" in asyncio.run(_with_agent(fleet, ask))
    finally:
        fleet.cli("jobs", "cancel", submitted.json()["job_id"])
