"""Client RPCs for tracked runs: show, artifacts, filtering, comparison, export.

Filters and sorts arrive as the text the user typed (``--where``, the TUI's
filter box) and are parsed here, in the controller, by
:mod:`mlfleet.core.tracking.runfilter`; a bad one comes back as one sentence that
names the column.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from msgspec import Meta

from mlfleet.core.base.bounds import ChunkSize, Ident, KeyCount, ListLimit, Offset, Points, RunIds
from mlfleet.core.base.errors import NotFoundError, UnavailableError, UsageError
from mlfleet.core.base.private import user_umask
from mlfleet.core.base.protocol import Peer
from mlfleet.core.tracking import metric_keys
from mlfleet.core.tracking import run_compare
from mlfleet.core.tracking import run_export
from mlfleet.core.tracking import run_queries
from mlfleet.core.store.db import jsonable
from mlfleet.core.audit.records import audit
from mlfleet.core.tracking import records
from mlfleet.core.tracking.records import resolve_run_id

if TYPE_CHECKING:
    from mlfleet.core.controller.service import ControllerContext


class RunsApi:
    """``rpc_run_*`` and ``rpc_runs_*``: what the tracked runs' clients ask."""

    def __init__(self, ctx: "ControllerContext") -> None:
        self.c = ctx

    @property
    def store(self):  # noqa: ANN201 - the controller's Store
        return self.c.store

    async def rpc_run_show(self, peer: Peer, run: Ident, keys: str | None = None,
                           max_keys: KeyCount = 100) -> dict[str, Any]:
        return await self.store.read(records.get_run, run, keys, max_keys)

    async def rpc_run_artifacts(self, peer: Peer, run: Ident) -> list[dict[str, Any]]:
        return await self.store.read(records.list_artifacts, run)

    async def rpc_run_artifact_read(self, peer: Peer, run: Ident, path: Annotated[str, Meta(min_length=1)],
                                    offset: Offset = 0, max_bytes: ChunkSize = 1024 * 1024) -> dict[str, Any]:
        """A chunk of a run's artifact, read on its node by the agent (base64 ``data``; ``sha256`` as logged)."""
        artifact = await self.store.read(records.find_artifact, run, path)
        link = self.c.links.get(artifact["host"])
        if link is None:
            raise NotFoundError(f"host {artifact['host']} of run {artifact['run_id']} is no longer configured")
        if not link.up:
            raise UnavailableError(f"host {artifact['host']} is {link.state}; its artifacts are there, try again later")
        chunk = await link.request("artifact_read", run_id=artifact["run_id"], path=artifact["path"], offset=offset,
                                   max_bytes=max_bytes, request_timeout=60)
        chunk.update(sha256=artifact["sha256"], logged_size=artifact["size"], host=artifact["host"])
        return chunk

    async def rpc_runs_list(self, peer: Peer, where: str | None = None, sort: str | None = None,
                            limit: ListLimit = 200, keys: str | None = None,
                            max_keys: KeyCount = run_queries.LIST_KEYS) -> list[dict[str, Any]]:
        """Runs that pass ``where``, in ``sort`` order (newest first by default), with params, tags, metrics.

        Each run carries at most ``max_keys`` metric keys (those matching the
        glob ``keys``) besides the ones ``where`` and ``sort`` name.
        """
        return await self.store.read(run_queries.list_runs, where, sort, limit, keys, max_keys)

    async def rpc_runs_compare(self, peer: Peer, runs: RunIds, metrics: list[str] | None = None,
                               points: Points = 500, keys: str | None = None,
                               max_keys: KeyCount = run_compare.COMPARE_KEYS) -> dict[str, Any]:
        """Downsampled curves (min, max, last per bucket), best values and param differences of a few runs."""
        return await self.store.read(run_compare.compare_runs, runs, metrics, points, keys, max_keys)

    async def rpc_run_metrics(self, peer: Peer, run: str, keys: str | None = None, after: str | None = None,
                              limit: int = metric_keys.MAX_PAGE) -> dict[str, Any]:
        """One page of a run's metric keys in key order (after the key ``after``): how ``runs show --all-keys`` pages."""
        return await self.store.read(_metric_page, run, keys, after, limit)

    async def rpc_runs_export(self, peer: Peer, output: Annotated[str, Meta(min_length=1)],
                              format: Literal["parquet", "csv"] | None = None, where: str | None = None,
                              sort: str | None = None, points: bool = False,
                              metrics: list[str] | None = None, mode: int | None = None,
                              force: bool = False) -> dict[str, Any]:
        """Write runs (one row each) or their metric points to ``output`` (an absolute path) with COPY.

        ``format``: parquet or csv; when left out, the one ``output``'s name ends in (.parquet, .csv).
        ``mode``: the file's permissions, from the client's umask: the file is the
        user's, not the controller's, so it does not get the controller's 0600.
        ``force``: replace an existing regular file (never a link); never a path in mlfleet's folders.
        """
        if not Path(output).is_absolute():
            raise UsageError(f"the output path must be absolute, got {output!r}")
        if mode is None:
            mode = 0o666 & ~user_umask()
        result = await self.store.read(run_export.export_runs, output, format, where, sort, points, metrics,
                                       mode & 0o777, self.c.home.own_folders(), force)
        await self.store.run(audit, peer.info["actor"], "runs.export", result["output"],
                             {"format": result["format"], "where": where, "rows": result["rows"], "kind": result["kind"]})
        return result


def _metric_page(con: Any, run: str, keys: str | None, after: str | None, limit: int) -> dict[str, Any]:
    if after is not None and not isinstance(after, str):
        raise UsageError(f"after must be a metric key, got {after!r}")
    run_id = resolve_run_id(con, run)
    page = metric_keys.page(con, run_id, keys, after, limit)
    page["metrics"] = [{n: jsonable(v) for n, v in m.items()} for m in page["metrics"]]
    page["summary"] = {k: {n: jsonable(v) for n, v in s.items()} for k, s in
                       metric_keys.declared(con, run_id, [m["key"] for m in page["metrics"]], 0).items()}
    return page
