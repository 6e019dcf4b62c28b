"""Shipping a replica's model file to its host before the launch: once per host and sha256.

A run whose ``spec.service.model_sha256`` is set reads
``<state>/models/<sha256>/<model_file>`` on its node. The launcher asks the
agent (``model_status``); when the file is not there it uploads
``home.model_store_dir/<sha256>/<model_file>`` to the agent's incoming name
(the transport writes a temporary name and renames it) and asks the agent to
verify and commit it (``model_commit``). Launches that need the same model on
the same host at the same time share one upload, as code snapshots do.

Failures are of two kinds: the controller's own copy is missing or damaged
(:class:`ModelUnavailable`: no retry can help, the run fails to start with
the sentence), or the host or the wire failed (any other exception: the
launch is tried again next tick).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
from pathlib import Path

from mlfleet.core.base.errors import MlfleetError, UsageError
from mlfleet.core.base.models import ServicePlan
from mlfleet.core.fleet.hostlink import HostLink

log = logging.getLogger(__name__)

_SHA = re.compile(r"^[0-9a-f]{64}$")
COMMIT_TIMEOUT_S = 1800.0  # the agent hashes the whole file (a model of tens of GB)


class ModelUnavailable(UsageError):
    """The model a replica needs is not (or no longer correctly) in the controller's model store."""


def model_source(store_dir: Path, plan: ServicePlan) -> Path:
    """Where the controller keeps the plan's model file; a name that could leave the store is refused."""
    sha, name = plan.model_sha256 or "", plan.model_file or ""
    if not _SHA.match(sha):
        raise ModelUnavailable(f"replica {plan.replica} names model sha256 {sha[:80]!r}, which is not 64 hex digits")
    if not name or "/" in name or "\0" in name or ".." in name or name.startswith("."):
        raise ModelUnavailable(f"replica {plan.replica} names model file {name[:80]!r}, which is not a plain file name")
    return store_dir / sha / name


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelShipper:
    """One per launcher: the uploads in flight, keyed by (host, sha256)."""

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir
        self._shipping: dict[tuple[str, str, str], asyncio.Task[None]] = {}

    async def ship(self, link: HostLink, plan: ServicePlan) -> None:
        """The plan's model committed on ``link``'s host; raises ModelUnavailable when it cannot ever be."""
        source = model_source(self.store_dir, plan)
        key = (link.name, plan.model_sha256 or "", plan.model_file or "")
        task = self._shipping.get(key)
        if task is None:
            task = self._shipping[key] = asyncio.get_running_loop().create_task(self._upload(link, source, plan))
            task.add_done_callback(lambda _: self._shipping.pop(key, None))
        await asyncio.shield(task)

    async def _upload(self, link: HostLink, source: Path, plan: ServicePlan) -> None:
        sha, name = plan.model_sha256 or "", plan.model_file or ""
        status = await link.request("model_status", sha256=sha, file_name=name)
        if status["present"]:
            return
        if status.get("same_bytes"):  # the same file under another name: the agent links it, nothing to send
            await link.request("model_commit", sha256=sha, file_name=name, request_timeout=COMMIT_TIMEOUT_S)
            return
        if not await asyncio.to_thread(source.is_file):
            raise ModelUnavailable(f"model file {source} is not in the controller's model store, so replica "
                                   f"{plan.replica} of {plan.deployment} cannot start; register the model again")
        try:
            await link.transport.upload(source, status["incoming"])  # type: ignore[attr-defined]
            await link.request("model_commit", sha256=sha, file_name=name, request_timeout=COMMIT_TIMEOUT_S)
        except MlfleetError as exc:
            if "arrived damaged" in str(exc) and await asyncio.to_thread(_sha256_of, source) != sha:
                raise ModelUnavailable(f"model file {source} no longer matches its sha256 {sha[:12]} (it changed "
                                       f"in the controller's model store), so replica {plan.replica} cannot start; "
                                       "register the model again") from None
            raise
        log.info("shipped model %s (%s) to %s", sha[:12], name, link.name)
