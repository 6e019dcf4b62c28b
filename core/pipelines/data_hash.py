"""The content hashes of what an ``on: data:`` trigger's globs match, on the controller's machine, at bounded cost.

The trigger loop asks every few seconds, so unchanged files must cost a
``stat`` and nothing more: hashes are cached in memory by (real path, size,
mtime_ns, inode), as agents/lineage.py's HashCache does on the nodes (and
with its trust: a file rewritten in place keeps neither its size nor its
mtime). The cache is in memory only: after a restart every file is read
once more, which costs time but can never make a change look like none.

Work per call is bounded by ``max_bytes``: a file that is new or changed is
read in chunks, and when the budget is spent the call answers None
("not yet") and keeps its place (the open sha256 and the offset), so the
next call goes on where this one stopped and a 200 GB file is hashed over
several ticks without ever holding the event loop. A folder matched counts
as its files. Matches past ``max_files`` are cut (the answer says so in a
path of its own), so a glob that matches a million files costs a bounded
walk.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections import OrderedDict
from pathlib import Path

_GLOB = re.compile(r"[*?[]")
CHUNK = 4 << 20
TRUNCATED = "(more files than the trigger hashes)"


class DataHasher:
    """sha256 per file matched by globs, cached by (real path, size, mtime_ns, inode), ``max_bytes`` read per call."""

    def __init__(self, max_bytes: int = 256 << 20, max_files: int = 10_000, max_cached: int = 200_000) -> None:
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.max_cached = max_cached
        self.hashed_bytes = 0  # in all, for status and tests
        self._cache: OrderedDict[str, tuple[tuple[int, int, int], str]] = OrderedDict()
        self._partial: dict[str, tuple[tuple[int, int, int], "hashlib._Hash", int]] = {}

    def hash_globs(self, patterns: list[str], base: Path | None) -> dict[str, str] | None:
        """``{path: sha256}`` of every file matched (relative patterns from ``base``, shown relative to it).

        None when the byte budget ran out before every file was hashed: call
        again (the work done is kept). A file that cannot be read is
        ``error: REASON``, so it turning readable again is a change too.
        """
        budget = [self.max_bytes]
        out: dict[str, str] = {}
        complete = True
        for shown, path in self._matches(patterns, base):
            if shown == TRUNCATED:
                out[shown] = path
                continue
            try:
                digest = self._sha256(path, budget)
            except OSError as exc:
                digest = f"error: {exc.strerror or exc}"
            if digest is None:
                complete = False
                break
            out[shown] = digest
        return out if complete else None

    def _matches(self, patterns: list[str], base: Path | None) -> list[tuple[str, str]]:
        found: dict[str, str] = {}
        for pattern in patterns:
            if os.path.isabs(pattern):
                full = pattern
            elif base is not None:
                full = str(base / pattern)
            else:
                continue  # a relative glob of a pipeline read from no file: nothing to read it from
            matches = sorted(glob.glob(full, recursive=True)) if _GLOB.search(pattern) else [full]
            for match in matches:
                shown = match if os.path.isabs(pattern) else os.path.relpath(match, base)
                if os.path.isdir(match):
                    for folder, dirs, names in os.walk(match):
                        if len(found) > self.max_files:
                            break
                        dirs.sort()
                        for name in sorted(names):
                            full_name = os.path.join(folder, name)
                            if os.path.isfile(full_name):
                                found[os.path.join(shown, os.path.relpath(full_name, match))] = full_name
                            if len(found) > self.max_files:
                                break
                elif os.path.isfile(match):
                    found[shown] = match
                if len(found) > self.max_files:
                    break
        listed = sorted(found.items())
        if len(listed) > self.max_files:
            return listed[:self.max_files] + [(TRUNCATED, f"over {self.max_files} files")]
        return listed

    def _sha256(self, path: str, budget: list[int]) -> str | None:
        real = os.path.realpath(path)
        st = os.stat(real)
        key = (st.st_size, st.st_mtime_ns, st.st_ino)
        cached = self._cache.get(real)
        if cached is not None and cached[0] == key:
            self._cache.move_to_end(real)
            return cached[1]
        partial = self._partial.pop(real, None)
        h, offset = (partial[1], partial[2]) if partial is not None and partial[0] == key else (hashlib.sha256(), 0)
        with open(real, "rb") as fh:
            fh.seek(offset)
            while True:
                if budget[0] <= 0:
                    self._partial[real] = (key, h, offset)
                    return None
                chunk = fh.read(min(CHUNK, budget[0]))
                if not chunk:
                    break
                h.update(chunk)
                offset += len(chunk)
                budget[0] -= len(chunk)
                self.hashed_bytes += len(chunk)
        digest = h.hexdigest()
        after = os.stat(real)
        if (after.st_size, after.st_mtime_ns, after.st_ino) == key:  # unchanged while it was read
            self._cache[real] = (key, digest)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return digest
