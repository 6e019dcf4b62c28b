"""One tree hash for every part: pipelines' outputs, the agent's lineage of a job's inputs, and the hash itself agree.

A folder's hash is the sha256 over ``REL/PATH\\0SHA256\\n`` per file, sorted
by the path's bytes (not by walk order: ``a.b`` sorts before ``a/b``), so
a step's output recorded by the controller and the same folder read as
another job's input on a node hash the same.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mlfleet.agents.lineage import HashCache, hash_inputs
from mlfleet.core.base.tree_hash import TreeError, tree_digest
from mlfleet.core.pipelines.outputs import hash_output


def _tree(root: Path) -> dict[str, bytes]:
    files = {"a.b": b"dot\n", "a/b": b"slash\n", "ab": b"plain\n", "z/deep/er.txt": b"deeper\n", "0": b""}
    for rel, data in files.items():
        (root / "t" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "t" / rel).write_bytes(data)
    (root / "t" / "empty").mkdir()
    return files


def test_a_folder_hashes_by_the_documented_formula_in_every_part(tmp_path: Path) -> None:
    files = _tree(tmp_path)
    lines = b"".join(rel.encode() + b"\0" + hashlib.sha256(data).hexdigest().encode() + b"\n"
                     for rel, data in sorted(files.items(), key=lambda kv: kv[0].encode()))
    expected = hashlib.sha256(lines).hexdigest()
    digest = tree_digest(tmp_path, "t")
    assert digest == (expected, sum(map(len, files.values())), len(files))
    assert hash_output(tmp_path, "out", "t").sha256 == expected
    cache = HashCache(tmp_path / "cache")
    [recorded] = hash_inputs(["t"], str(tmp_path), cache)
    assert (recorded.sha256, recorded.size, recorded.files) == tuple(digest)
    assert cache.hashed_bytes == digest.size
    [again] = hash_inputs(["t"], str(tmp_path), cache)
    assert again.sha256 == expected and cache.hashed_bytes == digest.size  # its files came from the cache
    assert tree_digest(tmp_path, "t/a.b").sha256 == hashlib.sha256(b"dot\n").hexdigest()


def test_a_link_inside_a_folder_input_is_an_input_error_not_followed(tmp_path: Path) -> None:
    _tree(tmp_path)
    os.symlink("/etc/passwd", tmp_path / "t" / "z" / "passwd")
    [recorded] = hash_inputs(["t"], str(tmp_path), HashCache(tmp_path / "cache"))
    assert recorded.sha256 is None and "holds a symbolic link (t/z/passwd)" in (recorded.error or "")
    with pytest.raises(TreeError, match="is not a path inside the workdir"):
        tree_digest(tmp_path, "t/../t")
