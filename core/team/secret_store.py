"""The secret store: one 0600 JSON file in the controller's data folder, never the DuckDB file.

Why a file and not the OS keyring: the controller is a headless daemon (often
on a head node, over SSH) where no keyring session runs, and ``keyring`` is
not a dependency; a file readable by its owner only is what ssh keeps its
keys in. It is written by temp + fsync + rename, 0600 from its creation, and
refused when its mode lets anyone else read it or when someone else owns it
(then it may have been planted or read). Values never leave this module but
through :meth:`SecretStore.values` (launch) and :func:`mask_values`' callers.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

from mlfleet.core.base.errors import NotFoundError, UsageError

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MIN_LENGTH = 4  # shorter values cannot be masked in logs without mangling them ("***" for every "a")
MAX_LENGTH = 64 * 1024


def check_name(name: str) -> str:
    """A secret's name: letters, digits, '_', '.', '-', up to 64, starting with a letter or digit."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise UsageError(f"secret name {str(name)[:80]!r} is not valid: use up to 64 letters, digits, '_', '.' or '-', "
                         "starting with a letter or digit (e.g. hf)")
    return name


def check_value(name: str, value: str) -> str:
    if not isinstance(value, str) or len(value) < MIN_LENGTH:
        raise UsageError(f"secret {name!r} is shorter than {MIN_LENGTH} characters: it could not be masked in "
                         "job logs without mangling them; give the whole value")
    if len(value) > MAX_LENGTH:
        raise UsageError(f"secret {name!r} is longer than {MAX_LENGTH} characters")
    if "\0" in value:
        raise UsageError(f"secret {name!r} holds a NUL character, which no environment variable can carry")
    return value


class SecretStore:
    """The secrets of one installation, read from disk on every use (a second controller never sees stale ones)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise UsageError(f"cannot open the secret store {str(self.path)!r}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if st.st_uid != os.geteuid():
                raise UsageError(f"the secret store {str(self.path)!r} is owned by uid {st.st_uid}, not by you: "
                                 "refusing to read it; move it away and set the secrets again")
            if stat.S_IMODE(st.st_mode) & 0o077:
                raise UsageError(f"the secret store {str(self.path)!r} has mode {stat.S_IMODE(st.st_mode):04o}, so "
                                 "others may have read it: refusing to use it; chmod 600 it (and rotate the secrets)")
            try:
                data = json.loads(fh.read())
            except ValueError:
                raise UsageError(f"the secret store {str(self.path)!r} is not valid JSON; move it away and set the "
                                 "secrets again") from None
        secrets = data.get("secrets") if isinstance(data, dict) else None
        return secrets if isinstance(secrets, dict) else {}

    def _write(self, secrets: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # a leftover temp file of another mode keeps its mode under O_CREAT
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"version": 1, "secrets": secrets}, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash
        finally:
            os.close(dir_fd)

    def set(self, name: str, value: str, actor: str) -> bool:
        """Store ``name``; True when it replaced an earlier value."""
        check_value(check_name(name), value)
        secrets = self._read()
        replaced = name in secrets
        secrets[name] = {"value": value, "set_by": actor, "set_at": time.time()}
        self._write(secrets)
        return replaced

    def remove(self, name: str) -> None:
        secrets = self._read()
        if check_name(name) not in secrets:
            raise NotFoundError(f"no secret named {name!r}; see mlfleet secrets list")
        del secrets[name]
        self._write(secrets)

    def listing(self) -> list[dict[str, Any]]:
        """Names, who set them and when: never values."""
        return [{"name": name, "set_by": entry.get("set_by"), "set_at": entry.get("set_at")}
                for name, entry in sorted(self._read().items())]

    def names(self) -> set[str]:
        return set(self._read())

    def values(self, names: dict[str, str]) -> dict[str, str]:
        """Env key -> value for ``{env key: secret name}``; a missing secret is one sentence naming both."""
        secrets = self._read()
        out: dict[str, str] = {}
        for key, name in names.items():
            entry = secrets.get(name)
            if not isinstance(entry, dict) or not isinstance(entry.get("value"), str):
                raise NotFoundError(missing_sentence(key, name))
            out[key] = entry["value"]
        return out


def missing_sentence(key: str, name: str) -> str:
    return (f"env.{key} refers to secret {name!r}, which is not set on this controller; "
            f"set it with: mlfleet secrets set {name}")


def unknown_secrets(store: SecretStore, refs: dict[str, str]) -> None:
    """At submit: every secret a spec refers to is set (the first one missing is the sentence)."""
    if not refs:
        return
    names = store.names()
    for key, name in sorted(refs.items()):
        if name not in names:
            raise UsageError(missing_sentence(key, name))
