"""Which hosts have a job's environment built already: what placement prefers among hosts that fit alike.

Why here and not in the scheduler: a job's ``env_hash`` depends on the
host (its interpreter and platform), and learning it takes I/O (a probe,
a resolution); the scheduler stays pure and is handed, per job, the hosts
where it is warm (``QueuedJob.warm_hosts``). This keeps two maps, both in
memory and both rebuilt by use after a restart:

* ``(environment key, host) -> env_hash``: learned each time an environment
  is planned for a host (core/environments/prepare.py). The key is the
  ``environment:`` block itself, plus the code snapshot when requirements
  come from a file or project in the workdir (the snapshot holds those
  bytes). So a job whose environment was never planned anywhere is warm
  nowhere, even if an identical one was: the honest answer without a
  resolution, and a resolution is not for a scheduling tick.
* ``host -> ready env_hashes``: from runs that prepared there, and from the
  agent's ``env_ready`` answers, asked at most every ``REFRESH_S`` per host
  and only about the hashes of waiting jobs (bounded): an environment the
  node's garbage collection removed stops counting at the next answer.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from mlfleet.core.base.models import Environment

REFRESH_S = 60.0  # a host's env_ready is asked again after this long
MAX_ASKED = 1000  # agents/daemon.py MAX_ENV_HASHES


def env_key(env: Environment, code_hash: str | None) -> str:
    """What makes two jobs' environments the same on any one host, without resolving."""
    from_workdir = isinstance(env.requirements, str) or env.project is not None
    return msgspec.json.encode([msgspec.to_builtins(env), code_hash if from_workdir else None], order="sorted").decode()


class WarmEnvironments:
    """Per host, the env_hash of each environment planned there and which of them are built."""

    def __init__(self) -> None:
        self._hashes: dict[str, dict[str, str]] = {}  # env key -> host -> env_hash
        self._ready: dict[str, set[str]] = {}  # host -> env_hashes built there
        self._asked: dict[str, float] = {}  # host -> when env_ready was last asked (monotonic)

    def planned(self, host: str, key: str, env_hash: str) -> None:
        """The environment ``key`` is ``env_hash`` on ``host`` (a plan was made for it there)."""
        self._hashes.setdefault(key, {})[host] = env_hash

    def built(self, host: str, env_hash: str) -> None:
        """A run was launched on ``host`` in ``env_hash``: the agent builds it before the run starts."""
        self._ready.setdefault(host, set()).add(env_hash)

    def warm_hosts(self, key: str) -> frozenset[str]:
        """The hosts where the environment ``key`` is built."""
        return frozenset(host for host, h in self._hashes.get(key, {}).items() if h in self._ready.get(host, ()))

    def to_ask(self, host: str, keys: Iterable[str], now: float) -> list[str]:
        """The env_hashes of these (waiting jobs') environments on ``host`` to ask ``env_ready`` about now."""
        if now - self._asked.get(host, float("-inf")) < REFRESH_S:
            return []
        hashes = sorted({h for key in keys if (h := self._hashes.get(key, {}).get(host)) is not None})[:MAX_ASKED]
        if hashes:
            self._asked[host] = now
        return hashes

    def answered(self, host: str, ready: dict[str, bool]) -> None:
        """The agent's ``env_ready`` answer: built ones count, removed (or never built) ones stop counting."""
        known = self._ready.setdefault(host, set())
        for env_hash, is_ready in ready.items():
            (known.add if is_ready else known.discard)(env_hash)

    def forget_host(self, host: str) -> None:
        """A host removed from the fleet, or whose agent was replaced: nothing is known to be built there."""
        self._ready.pop(host, None)
        self._asked.pop(host, None)
