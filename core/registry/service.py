"""The registry inside the controller: it answers requests, and at start it clears what a killed copy left.

A registration writes its copy to ``.incoming-*`` in the model store before
it is verified and renamed (core/registry/model_store.py). A controller
killed part way leaves that file behind; at start no registration can be in
flight (one controller per installation holds the lock), so every such file
is a leftover and is removed. Nothing else in the store is ever touched.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from mlfleet.core.base.rpc import rpc_methods
from mlfleet.core.controller.service import BaseService, ControllerContext, Rpc
from mlfleet.core.registry import model_store
from mlfleet.core.registry.api import RegistryApi

log = logging.getLogger(__name__)


class RegistryService(BaseService):
    name = "models"

    def __init__(self, ctx: ControllerContext) -> None:
        self.ctx = ctx
        self.api = RegistryApi(ctx)
        self.leftovers_removed = 0

    async def start(self) -> None:
        removed = await asyncio.to_thread(model_store.remove_leftovers, self.ctx.home.model_store_dir)
        self.leftovers_removed = len(removed)
        for path in removed:
            log.info("removed %s, a copy into the model store that a stopped controller left unfinished", path)

    def status(self) -> dict[str, Any]:
        return {"model_store_leftovers_removed": self.leftovers_removed} if self.leftovers_removed else {}

    def rpcs(self) -> dict[str, Rpc]:
        return rpc_methods(self.api)
