"""Train the tabular example: softmax regression on a synthetic, seeded iris-like dataset, in numpy.

No downloads: three species are drawn from Gaussians with the per-species
means and spreads of Fisher's iris measurements (in cm), so the classic
request ``[5.1, 3.5, 1.4, 0.2]`` is a setosa here too. Writes

* ``out/model.npz``: weights, bias, the standardisation, feature and class
  names (and ``broken`` when trained with ``--broken``, which makes the
  server's /predict fail: a bad model for the rollback story);
* ``out/reference.csv``: the training features, the reference a drift check
  compares captured requests with (``mlfleet drift profile``);

and logs both as artifacts, with loss/accuracy curves and ``val_accuracy``,
through ``mlfleet.track`` (no-ops outside mlfleet). Settings come from the
job's ``params`` (``--set params.epochs=300``), a flag given here wins.
With ``data`` (a CSV of the four features and the species index, as the
closed-loop pipeline's prepare step writes it) it learns from that file
instead of drawing rows, so a model is traceable to the data it saw.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from mlfleet import track

FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
CLASSES = ("setosa", "versicolor", "virginica")
MEANS = np.array([[5.01, 3.43, 1.46, 0.25], [5.94, 2.77, 4.26, 1.33], [6.59, 2.97, 5.55, 2.03]])
SPREADS = np.array([[0.35, 0.38, 0.17, 0.11], [0.52, 0.31, 0.47, 0.20], [0.64, 0.32, 0.55, 0.27]])
DEFAULTS = {"seed": 0, "rows": 3000, "epochs": 300, "lr": 0.5, "l2": 0.001, "broken": False, "out": "out",
            "data": ""}


def dataset(seed: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` measurements (rounded to the millimetre, like the real ones) and their species index."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), size=rows)
    x = np.round(np.clip(rng.normal(MEANS[y], SPREADS[y]), 0.1, None), 1)
    return x, y


def load_rows(path: str) -> tuple[np.ndarray, np.ndarray]:
    """The rows of a CSV of the four features and the species index (no header), e.g. data/iris.csv."""
    table = np.loadtxt(path, delimiter=",", ndmin=2)
    if table.shape[1] != len(FEATURES) + 1:
        raise SystemExit(f"{path}: {table.shape[1]} columns; expected {', '.join(FEATURES)} and the species index")
    return table[:, :len(FEATURES)], table[:, len(FEATURES)].astype(int)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def settings() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, default in DEFAULTS.items():
        if isinstance(default, bool):
            parser.add_argument(f"--{key}", action="store_true", default=None)
        else:
            parser.add_argument(f"--{key}", type=type(default), default=None)
    given = {k: v for k, v in vars(parser.parse_args()).items() if v is not None}
    return {**track.params(DEFAULTS), **given}


def main() -> None:
    cfg = settings()
    x, y = load_rows(str(cfg["data"])) if cfg["data"] else dataset(int(cfg["seed"]), int(cfg["rows"]))
    split = len(y) * 4 // 5
    x_train, y_train, x_val, y_val = x[:split], y[:split], x[split:], y[split:]
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    z_train, z_val = (x_train - mean) / std, (x_val - mean) / std
    onehot = np.eye(len(CLASSES))[y_train]

    track.set_tags({"dataset": "synthetic-iris", "model": "softmax-regression"})
    track.summary("val_accuracy", "max")
    track.summary("val_loss", "min")
    w = np.zeros((len(FEATURES), len(CLASSES)))
    b = np.zeros(len(CLASSES))
    started = time.monotonic()
    epochs, lr, l2 = int(cfg["epochs"]), float(cfg["lr"]), float(cfg["l2"])
    for epoch in range(1, epochs + 1):
        p = softmax(z_train @ w + b)
        loss = float(-np.mean(np.log(p[np.arange(split), y_train] + 1e-12)) + l2 * np.sum(w * w) / 2)
        w -= lr * (z_train.T @ (p - onehot) / split + l2 * w)
        b -= lr * (p - onehot).mean(axis=0)
        if epoch % 10 == 0 or epoch == epochs:
            pv = softmax(z_val @ w + b)
            val_loss = float(-np.mean(np.log(pv[np.arange(len(y_val)), y_val] + 1e-12)))
            track.log({"loss": loss, "accuracy": float(np.mean(p.argmax(axis=1) == y_train)),
                       "val_loss": val_loss, "val_accuracy": float(np.mean(pv.argmax(axis=1) == y_val))}, step=epoch)
    val_accuracy = float(np.mean(softmax(z_val @ w + b).argmax(axis=1) == y_val))

    out = Path(str(cfg["out"]))
    out.mkdir(parents=True, exist_ok=True)
    model = out / "model.npz"
    np.savez(model, weights=w, bias=b, mean=mean, std=std, features=np.array(FEATURES),
             classes=np.array(CLASSES), broken=np.array(bool(cfg["broken"])))
    reference = out / "reference.csv"
    np.savetxt(reference, x_train, fmt="%.1f", delimiter=",", header=",".join(FEATURES), comments="")
    track.log_artifact(model)
    track.log_artifact(reference)
    broken = " (marked broken: its server's /predict answers 500)" if cfg["broken"] else ""
    print(f"trained in {time.monotonic() - started:.2f} s: val_accuracy {val_accuracy:.3f}; "
          f"wrote {model} and {reference}{broken}", flush=True)


if __name__ == "__main__":
    main()
