"""A user trains with PyTorch Lightning or the transformers Trainer and sees the run in mlfleet.

The adapters are exercised by real, tiny training runs (CPU, random data, a
model built from a config: nothing is downloaded), each in its own process
with ``MLFLEET_METRICS_FILE`` set as the agent would set it; the lines they
write are read back with the controller's own parser. One story goes the
whole way: a job that runs a Lightning fit on the local agent.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import shutil
import subprocess
import sys
from argparse import Namespace
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from conftest import Fleet
from mlfleet.agents.integrations.values import flatten_params, numeric_metrics
from mlfleet.core.tracking.ingest import ParsedBatch, parse_lines

JOBS = Path(__file__).resolve().parent / "adapter_jobs"
# scripts/test.sh installs the adapters extra and sets MLFLEET_REQUIRE_ADAPTERS, so these never skip there;
# a bare `pytest` in a venv without the extra skips them instead of failing on an import.
_MAY_SKIP = not os.environ.get("MLFLEET_REQUIRE_ADAPTERS")
needs_lightning = pytest.mark.skipif(_MAY_SKIP and find_spec("lightning") is None,
                                     reason="needs pip install -e '.[adapters]'")
needs_transformers = pytest.mark.skipif(_MAY_SKIP and (find_spec("transformers") is None or find_spec("accelerate") is None),
                                        reason="needs pip install -e '.[adapters]'")


def run_job_script(script: str, workdir: Path) -> ParsedBatch:
    """Run one of tests/adapter_jobs as a job would run it, and parse the metrics file it wrote."""
    metrics_file = workdir / "metrics.jsonl"
    env = {**os.environ, "MLFLEET_METRICS_FILE": str(metrics_file), "MLFLEET_RUN_ID": "jtest-1",
           "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(JOBS / script)], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    batch = parse_lines(metrics_file.read_text(), 0)
    assert batch.bad_lines == 0, batch.first_error
    return batch


def points(batch: ParsedBatch, key: str) -> list[tuple[int | None, float]]:
    return [(s, v) for k, s, v in zip(batch.keys, batch.steps, batch.values) if k == key]


@needs_lightning
def test_a_lightning_fit_logs_its_metrics_hyperparameters_and_tags(tmp_path: Path) -> None:
    batch = run_job_script("lightning_fit.py", tmp_path)

    train = points(batch, "train_loss")
    assert [step for step, _ in train] == list(range(8))  # 2 epochs x 4 batches, every step
    assert train[-1][1] < train[0][1]  # it learned something
    assert [step for step, _ in points(batch, "val_loss")] == [3, 7]  # once per epoch, at its last step
    assert set(batch.keys) == {"train_loss", "val_loss", "epoch"}
    assert batch.params == {"lr": 0.1, "optimizer/name": "sgd", "optimizer/nesterov": False}
    assert batch.tags == {"framework": "lightning", "dataset": "random", "lightning_status": "success"}


@needs_transformers
def test_a_transformers_trainer_run_logs_losses_eval_and_its_arguments(tmp_path: Path) -> None:
    batch = run_job_script("hf_train.py", tmp_path)

    assert [step for step, _ in points(batch, "loss")] == [2, 4, 6]  # logging_steps=2 of max_steps=6
    assert [step for step, _ in points(batch, "eval_loss")] == [3, 6]  # eval_steps=3
    assert [step for step, _ in points(batch, "train_loss")] == [6]  # the summary at the end
    assert {"learning_rate", "grad_norm", "epoch", "train_runtime"} <= set(batch.keys)
    assert all(math.isfinite(v) for v in batch.values)
    # The training arguments as given, the model's config under model/, tokens masked.
    assert batch.params["learning_rate"] == 0.001 and batch.params["max_steps"] == 6
    assert batch.params["model/hidden_size"] == 16 and batch.params["model/num_hidden_layers"] == 1
    assert batch.params["model/id2label/0"] == "LABEL_0"
    assert batch.params["hub_token"] == "<HUB_TOKEN>"
    assert batch.tags == {"framework": "transformers", "dataset": "random"}


@needs_lightning
def test_a_lightning_job_on_the_fleet_shows_its_metrics_in_runs_show(fleet: Fleet) -> None:
    (fleet.root / "specs").mkdir(exist_ok=True)
    shutil.copy(JOBS / "lightning_fit.py", fleet.root / "specs" / "lightning_fit.py")
    spec = fleet.write_spec("lit", "name: lit\ncommand: [python, lightning_fit.py]\n")
    done = fleet.cli("submit", str(spec), "--wait", "--json", timeout=120)
    assert done.code == 0, done.out + done.err

    run = fleet.cli_json("runs", "show", done.json()["run_id"])
    metrics = {m["key"]: m for m in run["metrics"]}
    assert metrics["train_loss"]["points"] == 8 and metrics["train_loss"]["last_step"] == 7
    assert metrics["val_loss"]["points"] == 2
    assert run["params"]["lr"] == 0.1 and run["params"]["optimizer/name"] == "sgd"
    assert run["tags"]["framework"] == "lightning" and run["tags"]["lightning_status"] == "success"


def test_importing_mlfleet_and_its_adapters_package_never_imports_torch() -> None:
    code = ("import sys, mlfleet, mlfleet.agents.integrations, mlfleet.agents.integrations.values\n"
            "from mlfleet import track\n"
            "heavy = sorted(m for m in ('torch', 'lightning', 'transformers') if m in sys.modules)\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


class Precision(enum.Enum):
    HALF = "16"


@dataclasses.dataclass
class Schedule:
    warmup: int = 10
    kind: str = "cosine"


def test_hyperparameters_are_flattened_into_json_safe_values() -> None:
    params = Namespace(
        lr=np.float32(0.5), layers=[64, 64], optimizer={"name": "adam", "betas": (0.9, 0.999), "extra": {}},
        schedule=Schedule(), precision=Precision.HALF, data=Path("/data/set"), loss=math.nan, clip=math.inf,
        activation=np.tanh, ids=list(range(100)), table=np.zeros((2, 2)), seen={"b", "a"},
    )
    assert flatten_params(params) == {
        "lr": 0.5, "layers": [64, 64],
        "optimizer/name": "adam", "optimizer/betas": [0.9, 0.999], "optimizer/extra": {},
        "schedule/warmup": 10, "schedule/kind": "cosine", "precision": "16", "data": "/data/set",
        "loss": "nan", "clip": "inf", "activation": "tanh", "ids": str(list(range(100))),
        "table": str(np.zeros((2, 2))), "seen": ["a", "b"],
    }
    assert flatten_params({"a": {"b": 1}}, sep=".", prefix="cfg.") == {"cfg.a.b": 1}
    assert flatten_params(None) == {}


def test_metrics_keep_numbers_and_drop_what_is_not_one() -> None:
    logs = {"loss": np.float64(0.25), "ok": True, "steps": 3, "note": "50%", "vec": np.ones(3), "nan": math.nan}
    values = numeric_metrics(logs, prefix="train/")
    assert values["train/loss"] == 0.25 and values["train/ok"] == 1.0 and values["train/steps"] == 3.0
    assert math.isnan(values["train/nan"])
    assert set(values) == {"train/loss", "train/ok", "train/steps", "train/nan"}
