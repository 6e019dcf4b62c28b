"""A tiny training run for mlfleet's demo: logistic regression in numpy.

No downloads: the data is generated from a fixed seed. It runs for about
ten seconds, logging loss and accuracy every step and its params once,
through ``from mlfleet import track``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from mlfleet import track


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=10.0, help="wall time to spread the steps over")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    features, samples = 20, 8192
    true_w = rng.normal(size=features)
    x = rng.normal(size=(samples, features))
    y = (x @ true_w + rng.normal(scale=0.5, size=samples) > 0).astype(np.float64)
    split = samples * 3 // 4
    x_train, y_train, x_val, y_val = x[:split], y[:split], x[split:], y[split:]

    track.log_params({"lr": args.lr, "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed,
                      "model": "logistic-regression", "features": features})
    track.set_tags({"dataset": "synthetic-linear"})

    w = np.zeros(features)
    pause = args.seconds / max(args.steps, 1)
    for step in range(1, args.steps + 1):
        idx = rng.integers(0, split, size=args.batch_size)
        xb, yb = x_train[idx], y_train[idx]
        p = 1.0 / (1.0 + np.exp(-(xb @ w)))
        w -= args.lr * xb.T @ (p - yb) / len(yb)
        eps = 1e-12
        loss = float(-np.mean(yb * np.log(p + eps) + (1 - yb) * np.log(1 - p + eps)))
        metrics = {"loss": loss, "accuracy": float(np.mean((p > 0.5) == yb))}
        if step % 10 == 0 or step == args.steps:
            pv = 1.0 / (1.0 + np.exp(-(x_val @ w)))
            metrics["val_accuracy"] = float(np.mean((pv > 0.5) == y_val))
        track.log(metrics, step=step)
        if step % 20 == 0:
            print(f"step {step}: loss {loss:.4f} accuracy {metrics['accuracy']:.3f}", flush=True)
        time.sleep(pause)
    print("done", flush=True)


if __name__ == "__main__":
    main()
