"""A PyTorch Lightning logger that writes to ``mlfleet.track``.

    from mlfleet.agents.integrations.lightning import MlfleetLogger

    trainer = Trainer(logger=MlfleetLogger(tags={"dataset": "cifar10"}))

Everything ``self.log(...)`` records arrives as metrics at the trainer's
global step, ``save_hyperparameters()`` arrives as flattened params, and the
fit's final status as the tag ``lightning_status``. Like ``track`` itself it
is a no-op outside an mlfleet job, so the same script runs on a laptop.

This module imports Lightning (``lightning``, or the older
``pytorch_lightning`` package when that is the one installed); nothing else
in mlfleet does, so mlfleet never needs torch.
"""

from __future__ import annotations

from argparse import Namespace
from collections.abc import Mapping
from types import ModuleType
from typing import Any

try:
    from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
    from lightning.pytorch.utilities.rank_zero import rank_zero_only
except ImportError:  # only the standalone package: same classes under the old name
    from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

from mlfleet.agents import track
from mlfleet.agents.integrations.values import flatten_params, numeric_metrics

__all__ = ["MlfleetLogger"]


class MlfleetLogger(Logger):
    """Send a Lightning run's metrics, hyperparameters and tags to the mlfleet run it is part of.

    Only global rank zero writes (Lightning calls the logger on every rank),
    so a multi-GPU job logs each point once.

    Args:
        prefix: put before every metric key (``"train/"``), for runs that log
            from several loggers or stages into one mlfleet run.
        tags: recorded once, when the logger is made, beside ``framework: lightning``.
        sep: joins nested hyperparameter names (``optimizer/lr``).
    """

    def __init__(self, *, prefix: str = "", tags: Mapping[str, Any] | None = None, sep: str = "/") -> None:
        super().__init__()
        self._prefix = prefix
        self._sep = sep
        if rank_zero_only.rank == 0:
            track.set_tags({"framework": "lightning", **(tags or {})})

    @property
    def name(self) -> str:
        return "mlfleet"

    @property
    def version(self) -> str:
        """The mlfleet run id (``local`` outside mlfleet)."""
        return track.run_id() or "local"

    @property
    @rank_zero_experiment
    def experiment(self) -> ModuleType:
        """The ``mlfleet.track`` module, for calls Lightning has no hook for
        (``logger.experiment.set_tags({...})``); a do-nothing stand-in on other ranks."""
        return track

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        values = numeric_metrics(metrics, prefix=self._prefix)
        if values:
            track.log(values, step=step)

    @rank_zero_only
    def log_hyperparams(self, params: Mapping[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        flat = flatten_params(params, sep=self._sep)
        if flat:
            track.log_params(flat)

    @rank_zero_only
    def save(self) -> None:
        """Lightning calls this every few steps and at the end: write what is buffered."""
        track.flush()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        track.set_tags({"lightning_status": status})
        track.flush()
