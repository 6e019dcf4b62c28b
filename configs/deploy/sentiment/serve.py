"""Serve the text example (``sentiment/train.py``'s ``model.json``) over HTTP; the plumbing is ../modelserver.py.

    python sentiment/serve.py --model out/model.json --port 8080      # from configs/deploy
    curl -s localhost:8080/predict -d '{"texts": ["what a superb film"]}'
    {"predictions": ["positive"], "probabilities": [{"negative": 0.01, "positive": 0.99}], "version": 0}

``{"text": "..."}`` is one review. At most 256 texts of 10,000 characters
a request. Standard library only (plus prometheus_client), so it runs on the
agent's own Python, with no environment to build. Captured inputs are
``{"text": ...}`` objects: a column ``text`` for drift checks.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # modelserver.py, one folder up
from modelserver import BadRequest, LoadedModel, Prediction, main, model_version  # noqa: E402
from train import ngrams  # noqa: E402 - the very featurisation the model was trained with (train.py is beside this)

MAX_TEXTS = 256
MAX_CHARS = 10_000


def load(path: Path) -> LoadedModel:
    try:
        model = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a model.json ({exc})") from None
    if not isinstance(model, dict) or model.get("format") != "char-ngram-naive-bayes/1":
        raise ValueError("not a char-ngram-naive-bayes/1 model (train it with sentiment/train.py)")
    classes, prior, table = model["classes"], model["log_prior"], model["log_likelihood"]
    low, high = model["ngram_range"]
    version = model_version()

    def texts_of(body: Any) -> list[str]:
        if isinstance(body, dict) and isinstance(body.get("text"), str):
            texts = [body["text"]]
        else:
            texts = body.get("texts") if isinstance(body, dict) else None
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise BadRequest(f'send {{"texts": ["a review", ...]}} (1 to {MAX_TEXTS} strings) or {{"text": "..."}}')
        if len(texts) > MAX_TEXTS:
            raise BadRequest(f"{len(texts)} texts in one request; at most {MAX_TEXTS}")
        if (longest := max(len(t) for t in texts)) > MAX_CHARS:
            raise BadRequest(f"a text of {longest} characters; at most {MAX_CHARS}")
        return texts

    def probabilities(text: str) -> list[float]:
        scores = list(prior)
        for gram in ngrams(text, low, high):
            row = table.get(gram)
            if row is not None:
                scores = [s + v for s, v in zip(scores, row)]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        return [w / sum(weights) for w in weights]

    def predict(body: Any) -> Prediction:
        texts = texts_of(body)
        rows = [probabilities(t) for t in texts]
        labels = [classes[max(range(len(p)), key=p.__getitem__)] for p in rows]
        answer = {"predictions": labels, "version": version,
                  "probabilities": [{c: round(v, 6) for c, v in zip(classes, p)} for p in rows]}
        return Prediction(inputs=[{"text": t} for t in texts], outputs=labels, labels=labels, answer=answer)

    return LoadedModel(name="sentiment", describe=f"char {low}-{high}-gram naive Bayes ({len(table)} n-grams) "
                       f"from {path.name}", predict=predict, broken=bool(model.get("broken", False)))


if __name__ == "__main__":
    raise SystemExit(main("sentiment", load))
