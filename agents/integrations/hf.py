"""A Hugging Face Transformers ``TrainerCallback`` that writes to ``mlfleet.track``.

    from mlfleet.agents.integrations.hf import MlfleetCallback

    trainer = Trainer(model=model, args=TrainingArguments(..., report_to="none"),
                      callbacks=[MlfleetCallback(tags={"dataset": "wikitext"})])

Whatever the Trainer logs (``loss``, ``learning_rate``, ``grad_norm``,
``eval_*``, the ``train_*`` summary at the end) arrives as metrics at the
Trainer's global step; the training arguments and the model's config arrive
as flattened params when training starts (the config under ``model/``).
Like ``track`` itself it is a no-op outside an mlfleet job.

This module imports transformers; nothing else in mlfleet does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from mlfleet.agents import track
from mlfleet.agents.integrations.values import flatten_params, numeric_metrics

__all__ = ["MlfleetCallback"]


class MlfleetCallback(TrainerCallback):
    """Send a Trainer run's logs, arguments and model config to the mlfleet run it is part of.

    Only the main process (global rank zero) writes, so a multi-GPU job logs
    each point once. Evaluation metrics come through ``on_log`` (the Trainer
    logs them there as well as passing them to ``on_evaluate``), so they are
    written once.

    Args:
        prefix: put before every metric key.
        tags: recorded when training starts, beside ``framework: transformers``.
        log_model_config: also record ``model.config`` as ``model/...`` params.
        sep: joins nested parameter names.
    """

    def __init__(self, *, prefix: str = "", tags: Mapping[str, Any] | None = None,
                 log_model_config: bool = True, sep: str = "/") -> None:
        self._prefix = prefix
        self._tags = dict(tags or {})
        self._log_model_config = log_model_config
        self._sep = sep

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        track.set_tags({"framework": "transformers", **self._tags})
        params = flatten_params(args.to_dict(), sep=self._sep)  # to_dict masks *_token values
        config = getattr(model, "config", None)
        if self._log_model_config and config is not None and hasattr(config, "to_dict"):
            params.update(flatten_params(config.to_dict(), sep=self._sep, prefix=f"model{self._sep}"))
        track.log_params(params)

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        values = numeric_metrics(logs, prefix=self._prefix)
        if values:
            track.log(values, step=state.global_step)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if state.is_world_process_zero:
            track.flush()
