"""Serve the tabular example (``iris/train.py``'s ``model.npz``) over HTTP; the plumbing is ../modelserver.py.

    python iris/serve.py --model out/model.npz --port 8080      # from configs/deploy
    curl -s localhost:8080/predict -d '{"rows": [[5.1, 3.5, 1.4, 0.2]]}'
    {"predictions": ["setosa"], "probabilities": [{"setosa": 0.99, ...}], "version": 0}

A row is a list of the four measurements in the model's feature order, or
an object naming them (``{"sepal_length": 5.1, ...}``). At most 1000 rows a
request. Captured inputs are always objects, so a drift check sees the same
columns as the reference the training wrote.
"""

from __future__ import annotations

import math
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # modelserver.py, one folder up
from modelserver import BadRequest, LoadedModel, Prediction, main, model_version  # noqa: E402

MAX_ROWS = 1000


def load(path: Path) -> LoadedModel:
    try:
        with np.load(path, allow_pickle=False) as npz:
            weights, bias = npz["weights"], npz["bias"]
            mean, std = npz["mean"], npz["std"]
            features = [str(f) for f in npz["features"]]
            classes = [str(c) for c in npz["classes"]]
            broken = bool(npz["broken"]) if "broken" in npz.files else False
    except zipfile.BadZipFile as exc:
        raise ValueError(f"not a model.npz ({exc})") from None
    if weights.shape != (len(features), len(classes)) or bias.shape != (len(classes),):
        raise ValueError(f"weights {weights.shape} do not fit {len(features)} features x {len(classes)} classes")
    version = model_version()

    def rows_of(body: Any) -> np.ndarray:
        rows = body.get("rows") if isinstance(body, dict) else None
        if not isinstance(rows, list) or not rows:
            raise BadRequest(f'send {{"rows": [[{", ".join(features)}], ...]}} (a list of 1 to {MAX_ROWS} rows)')
        if len(rows) > MAX_ROWS:
            raise BadRequest(f"{len(rows)} rows in one request; at most {MAX_ROWS}")
        table = []
        for i, row in enumerate(rows):
            if isinstance(row, dict):
                missing = [f for f in features if f not in row]
                if missing:
                    raise BadRequest(f"row {i} lacks {', '.join(missing)}")
                row = [row[f] for f in features]
            if not isinstance(row, list) or len(row) != len(features):
                raise BadRequest(f"row {i} is not {len(features)} numbers ({', '.join(features)})")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row):
                raise BadRequest(f"row {i} has a value that is not a finite number")
            table.append([float(v) for v in row])
        return np.array(table)

    def predict(body: Any) -> Prediction:
        x = rows_of(body)
        z = (x - mean) / std @ weights + bias
        e = np.exp(z - z.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
        labels = [classes[i] for i in p.argmax(axis=1)]
        probabilities = [{c: round(float(v), 6) for c, v in zip(classes, row)} for row in p]
        inputs = [dict(zip(features, row)) for row in x.tolist()]
        return Prediction(inputs=inputs, outputs=labels, labels=labels,
                          answer={"predictions": labels, "probabilities": probabilities, "version": version})

    return LoadedModel(name="iris", describe=f"softmax regression over {', '.join(features)} from {path.name}",
                       predict=predict, broken=broken)


if __name__ == "__main__":
    raise SystemExit(main("iris", load))
