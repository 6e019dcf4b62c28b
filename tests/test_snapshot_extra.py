"""A pipeline step's bundle: its workdir snapshot plus files and folders from elsewhere, placed at workdir paths.

``snapshot(..., extra={rel: absolute source})`` is how an upstream output
kept in the controller's store reaches the reader's workdir at the path its
producer declared (docs/pipelines.md, "How inputs reach a job"). Without
extra, the archive must stay byte for byte what it always was: job
snapshots are content-addressed, so any change would re-ship every
workdir and change every recorded code hash.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest

from mlfleet.core.base.errors import UsageError
from mlfleet.core.jobs import snapshot as snapshot_module
from mlfleet.core.jobs.snapshot import snapshot

# The tar inside the archive of _workdir()'s tree, as the snapshot code before ``extra`` packed it
# (computed with core/jobs/snapshot.py at e9ed675). The tar, not the .gz: gzip's bytes depend on zlib.
PINNED_TAR_SHA256 = "024318f08aa5029b5922961bdbf1cd1892941d472d686f81540a600c5b607ee6"


def _workdir(root: Path) -> Path:
    work = root / "w"
    (work / "sub").mkdir(parents=True)
    (work / "a.py").write_text("print('a')\n")
    (work / "sub" / "b.txt").write_text("b\n" * 100)
    (work / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(work / "run.sh", 0o755)
    os.symlink("a.py", work / "link.py")
    return work


def _members(path: Path) -> dict[str, bytes | None]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: (tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()}


def test_without_extra_the_archive_is_byte_identical_to_before(tmp_path: Path) -> None:
    work = _workdir(tmp_path)
    plain = snapshot(work, tmp_path / "cache")
    empty = snapshot(work, tmp_path / "cache", extra={})
    assert plain.sha256 == empty.sha256 and plain.path.read_bytes() == empty.path.read_bytes()
    assert hashlib.sha256(gzip.decompress(plain.path.read_bytes())).hexdigest() == PINNED_TAR_SHA256


def test_extra_files_and_folders_land_at_their_paths_and_replace_the_code_entry(tmp_path: Path) -> None:
    work = _workdir(tmp_path)
    (work / "data").mkdir()
    (work / "data" / "iris.csv").write_text("old rows, from the workdir\n")
    store = tmp_path / "store"
    (store / "abc" / "iris.csv").parent.mkdir(parents=True)
    (store / "abc" / "iris.csv").write_text("rows the upstream step wrote\n")
    (store / "def" / "tables" / "deep").mkdir(parents=True)
    (store / "def" / "tables" / "x.csv").write_text("x\n")
    (store / "def" / "tables" / "deep" / "y.csv").write_text("y\n")

    bundle = snapshot(work, tmp_path / "cache", extra={"data/iris.csv": store / "abc" / "iris.csv",
                                                       "prep/tables": store / "def" / "tables"})
    got = _members(bundle.path)
    assert got["data/iris.csv"] == b"rows the upstream step wrote\n"  # the upstream's, not the workdir's
    assert got["prep/tables/x.csv"] == b"x\n" and got["prep/tables/deep/y.csv"] == b"y\n"
    assert got["a.py"] == b"print('a')\n" and "link.py" in got  # the code is all still there
    assert list(got) == [n for n in got if not n.startswith(("data/", "prep/"))] + \
        ["data/iris.csv", "prep/tables/deep/y.csv", "prep/tables/x.csv"]  # after the code, sorted
    assert bundle.files == 3 + 3  # a.py, run.sh, sub/b.txt; and the three extra files
    plain = snapshot(work, tmp_path / "cache")
    assert plain.sha256 != bundle.sha256 and _members(plain.path)["data/iris.csv"] == b"old rows, from the workdir\n"
    again = snapshot(work, tmp_path / "cache", extra={"prep/tables": store / "def" / "tables",
                                                      "data/iris.csv": store / "abc" / "iris.csv"})
    assert again.sha256 == bundle.sha256  # deterministic whatever the order extra was given in

    # A folder in extra replaces what the code had under (or at) the same path
    folder = snapshot(work, tmp_path / "cache", extra={"sub": store / "def" / "tables"})
    names = _members(folder.path)
    assert "sub/b.txt" not in names and names["sub/x.csv"] == b"x\n"


def test_a_link_or_fifo_in_an_extra_source_is_refused_naming_it(tmp_path: Path) -> None:
    work = _workdir(tmp_path)
    source = tmp_path / "src"
    (source / "inner").mkdir(parents=True)
    (source / "inner" / "ok.txt").write_text("ok\n")
    os.symlink("/etc/passwd", source / "inner" / "passwd")
    with pytest.raises(UsageError, match=r"bundle source .*src/inner/passwd is a symbolic link"):
        snapshot(work, tmp_path / "cache", extra={"data": source})
    os.symlink(source / "inner" / "ok.txt", tmp_path / "top-link")
    with pytest.raises(UsageError, match=r"top-link is a symbolic link"):
        snapshot(work, tmp_path / "cache", extra={"data/ok.txt": tmp_path / "top-link"})
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UsageError, match=r"pipe is neither a file nor a folder"):
        snapshot(work, tmp_path / "cache", extra={"data/pipe": tmp_path / "pipe"})
    with pytest.raises(UsageError, match=r"is not a path inside the workdir"):
        snapshot(work, tmp_path / "cache", extra={"../escape": source / "inner" / "ok.txt"})
    with pytest.raises(UsageError, match=r"must be an absolute path"):
        snapshot(work, tmp_path / "cache", extra={"data/ok.txt": Path("src/inner/ok.txt")})
    with pytest.raises(UsageError, match=r"bundle paths data/inner/ok.txt and data overlap"):
        snapshot(work, tmp_path / "cache", extra={"data": source / "inner" / "ok.txt",
                                                  "./data/inner/ok.txt": source / "inner" / "ok.txt"})
    with pytest.raises(UsageError, match=r"cannot be read"):
        snapshot(work, tmp_path / "cache", extra={"data/gone": tmp_path / "gone"})


def test_extra_counts_against_the_snapshot_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = _workdir(tmp_path)
    code = sum(len(p.read_bytes()) for p in work.rglob("*") if p.is_file() and not p.is_symlink())
    big = tmp_path / "big.bin"
    big.write_bytes(io.BytesIO(b"\0" * 4096).getvalue())
    monkeypatch.setattr(snapshot_module, "MAX_SNAPSHOT_BYTES", code + 4095)
    snapshot(work, tmp_path / "cache")  # the code alone fits
    with pytest.raises(UsageError, match=r"with the step's inputs .* data that big belongs on a host path"):
        snapshot(work, tmp_path / "cache", extra={"data/big.bin": big})
