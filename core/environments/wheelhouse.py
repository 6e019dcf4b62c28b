"""The workstation's wheelhouse: every wheel an environment needs, stored once by its sha256.

Why content-addressed: the same wheel serves every environment and every
node that uses it, a file is checked once against the hash the resolver
pinned and never fetched twice, and a name can never point at other bytes.
Wheels come from the pylock URL (urllib) or, when config.yaml lists
``environments.find_links`` folders, from there (for offline teams and
tests); each is written to a private temporary name, checked, then renamed,
so a crash or a bad download never leaves a wrong file under a hash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlparse

from mlfleet.core.base.models import PinnedWheel
from mlfleet.core.base.private import open_private, private_dir
from mlfleet.core.environments.resolve import EnvironmentFailure, ResolvedWheel

FETCH_TIMEOUT_S = 120.0
_CHUNK = 1 << 20


class WheelFetchError(EnvironmentFailure):
    """A wheel could not be fetched, or its bytes were not the ones the resolution pinned."""


class Wheelhouse:
    """``root/<sha256>``: files 0600 in a 0700 folder (core/base/private.py)."""

    def __init__(self, root: Path, find_links: Iterable[str] = ()) -> None:
        self.root = root
        self.find_links = tuple(Path(folder) for folder in find_links)
        self._lock = threading.Lock()  # one fetch per hash at a time, in this process
        self._fetching: dict[str, threading.Lock] = {}

    def path(self, sha256: str) -> Path:
        return self.root / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def ensure(self, wheels: Iterable[ResolvedWheel]) -> list[Path]:
        """Every wheel present and checked; fetched only when absent. Returns their paths, in order."""
        return [self.ensure_one(w) for w in wheels]

    def ensure_one(self, resolved: ResolvedWheel) -> Path:
        wheel = resolved.wheel
        target = self.path(wheel.sha256)
        if target.is_file():
            return target
        with self._lock:
            per_hash = self._fetching.setdefault(wheel.sha256, threading.Lock())
        with per_hash:
            if not target.is_file():  # another thread fetched it while this one waited
                self._fetch(resolved, target)
        return target

    def _fetch(self, resolved: ResolvedWheel, target: Path) -> None:
        private_dir(self.root)
        partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
        wheel = resolved.wheel
        try:
            digest = hashlib.sha256()
            fd = open_private(partial)
            with os.fdopen(fd, "wb") as out, self._open(resolved) as source:
                while chunk := source.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != wheel.sha256:
                raise WheelFetchError(f"{wheel.filename} from {_where(resolved.url)} is not the file the resolution "
                                      f"pinned (sha256 {digest.hexdigest()[:12]}, expected {wheel.sha256[:12]})")
            os.replace(partial, target)
        except WheelFetchError:
            raise
        except OSError as exc:
            raise WheelFetchError(f"fetching {wheel.filename} from {_where(resolved.url)} failed: {exc}") from None
        finally:
            partial.unlink(missing_ok=True)

    def _open(self, resolved: ResolvedWheel):  # noqa: ANN202 - a binary file-like object
        for folder in self.find_links:  # a configured folder first: offline teams and tests
            candidate = folder / resolved.wheel.filename
            if candidate.is_file():
                return open(candidate, "rb")
        parsed = urlparse(resolved.url)
        if parsed.scheme == "file":
            return open(unquote(parsed.path), "rb")
        if parsed.scheme not in ("https", "http"):
            raise WheelFetchError(f"{resolved.wheel.filename}: cannot fetch from {resolved.url!r}")
        return urllib.request.urlopen(resolved.url, timeout=FETCH_TIMEOUT_S)  # noqa: S310 - http(s) only, checked

    def link_into(self, wheel: PinnedWheel, folder: Path) -> Path:
        """Place a wheel into another wheelhouse on this machine (the local agent's): a hard link, else a copy."""
        target = folder / wheel.sha256
        if target.is_file():
            return target
        private_dir(folder)
        source = self.path(wheel.sha256)
        partial = folder / f".{wheel.sha256}.{os.getpid()}.part"
        partial.unlink(missing_ok=True)
        try:
            os.link(source, partial)
        except OSError:  # another file system: copy (the agent's state dir may live elsewhere)
            shutil.copyfile(source, partial)
            os.chmod(partial, 0o600)
        os.replace(partial, target)
        return target


def _where(url: str) -> str:
    parsed = urlparse(url)
    return parsed.netloc or parsed.path.rsplit("/", 1)[0] or url
