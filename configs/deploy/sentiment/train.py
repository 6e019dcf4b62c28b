"""Train the text example: a character n-gram naive Bayes sentiment classifier, in plain Python.

No downloads and no packages: the corpus (short film reviews) is generated
here from a fixed seed, from templates and word lists, with a share of
mixed reviews ("the plot was dull but the cast was superb, a delight") and
a few percent of flipped labels so the task is not trivial. The model
counts character 2- to 4-grams of each review (padded with spaces, so word
starts and ends are n-grams of their own) and keeps those seen at least
twice: a JSON file of per-class log likelihoods that ``sentiment/serve.py``
reads. Writes ``out/model.json`` and logs it as an artifact, with
``val_accuracy`` and the vocabulary size, through ``mlfleet.track``.
Settings come from the job's ``params``; a flag given here wins.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import Counter
from pathlib import Path

from mlfleet import track

CLASSES = ("negative", "positive")
POSITIVE = ("great", "wonderful", "delightful", "excellent", "charming", "brilliant", "lovely", "superb",
            "enjoyable", "moving", "gripping", "beautiful", "clever", "heartfelt", "stunning")
NEGATIVE = ("awful", "boring", "dreadful", "terrible", "dull", "clumsy", "tedious", "painful", "disappointing",
            "mediocre", "bland", "messy", "predictable", "lifeless", "forgettable")
NOUNS = ("film", "plot", "acting", "soundtrack", "ending", "script", "cast", "pacing", "dialogue", "score",
         "story", "direction", "cinematography", "lead", "finale")
INTENSIFIERS = ("really", "truly", "quite", "so", "very", "utterly", "rather", "simply")
VERDICT = {"positive": ("a delight", "worth every minute", "i loved it", "see it twice", "a joy"),
           "negative": ("a waste of time", "avoid it", "i walked out", "never again", "a chore")}
TEMPLATES = ("the {noun} was {adj}", "{intens} {adj} {noun}", "what a {adj} {noun}, {verdict}",
             "i found the {noun} {intens} {adj}", "{adj}. the {noun} alone is {adj2}",
             "the {noun} is {adj} and the {noun2} is {adj2}", "{verdict}: {adj} {noun}",
             "honestly the {noun} felt {adj}")
DEFAULTS = {"seed": 0, "reviews": 4000, "n_min": 2, "n_max": 4, "min_count": 2, "alpha": 1.0, "noise": 0.03,
            "mixed": 0.2, "broken": False, "out": "out"}


def review(rng: random.Random, label: str) -> str:
    """One review whose words all lean to ``label``."""
    own = POSITIVE if label == "positive" else NEGATIVE
    return rng.choice(TEMPLATES).format(noun=rng.choice(NOUNS), noun2=rng.choice(NOUNS), adj=rng.choice(own),
                                        adj2=rng.choice(own), intens=rng.choice(INTENSIFIERS),
                                        verdict=rng.choice(VERDICT[label]))


def corpus(seed: int, size: int, noise: float, mixed: float) -> list[tuple[str, str]]:
    """``size`` (text, label) pairs, the same for the same arguments."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(size):
        label = rng.choice(CLASSES)
        text = review(rng, label)
        if rng.random() < mixed:  # "the X was <other> but <own verdict>"
            other = "negative" if label == "positive" else "positive"
            text = f"{review(rng, other)} but {rng.choice(VERDICT[label])}"
        if rng.random() < noise:
            label = "negative" if label == "positive" else "positive"
        pairs.append((text, label))
    return pairs


def ngrams(text: str, n_min: int, n_max: int) -> list[str]:
    """The character n-grams the model counts (the server computes them the same way)."""
    padded = f" {' '.join(text.lower().split())} "
    return [padded[i:i + n] for n in range(n_min, n_max + 1) for i in range(len(padded) - n + 1)]


def fit(pairs: list[tuple[str, str]], n_min: int, n_max: int, min_count: int, alpha: float) -> dict:
    """Multinomial naive Bayes with Laplace smoothing over the n-grams seen at least ``min_count`` times."""
    counts = {c: Counter() for c in CLASSES}
    docs = Counter(label for _, label in pairs)
    for text, label in pairs:
        counts[label].update(ngrams(text, n_min, n_max))
    total = Counter()
    for c in CLASSES:
        total.update(counts[c])
    vocab = sorted(g for g, n in total.items() if n >= min_count)
    denominators = {c: sum(counts[c][g] for g in vocab) + alpha * len(vocab) for c in CLASSES}
    return {
        "format": "char-ngram-naive-bayes/1",
        "classes": list(CLASSES),
        "ngram_range": [n_min, n_max],
        "log_prior": [math.log(docs[c] / len(pairs)) for c in CLASSES],
        "log_likelihood": {g: [round(math.log((counts[c][g] + alpha) / denominators[c]), 5) for c in CLASSES]
                           for g in vocab},
    }


def classify(model: dict, text: str) -> str:
    scores = list(model["log_prior"])
    low, high = model["ngram_range"]
    for gram in ngrams(text, low, high):
        row = model["log_likelihood"].get(gram)
        if row is not None:
            scores = [s + v for s, v in zip(scores, row)]
    return model["classes"][max(range(len(scores)), key=scores.__getitem__)]


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
    started = time.monotonic()
    pairs = corpus(int(cfg["seed"]), int(cfg["reviews"]), float(cfg["noise"]), float(cfg["mixed"]))
    split = len(pairs) * 4 // 5
    train, val = pairs[:split], pairs[split:]
    track.set_tags({"dataset": "synthetic-reviews", "model": "char-ngram-naive-bayes"})
    track.summary("val_accuracy", "max")
    model = fit(train, int(cfg["n_min"]), int(cfg["n_max"]), int(cfg["min_count"]), float(cfg["alpha"]))
    model["broken"] = bool(cfg["broken"])
    accuracy = sum(classify(model, t) == y for t, y in train) / len(train)
    val_accuracy = sum(classify(model, t) == y for t, y in val) / len(val)
    track.log({"accuracy": accuracy, "val_accuracy": val_accuracy, "vocabulary": len(model["log_likelihood"])},
              step=1)

    out = Path(str(cfg["out"]))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.json"
    path.write_text(json.dumps(model, separators=(",", ":")))
    track.log_artifact(path)
    broken = " (marked broken: its server's /predict answers 500)" if cfg["broken"] else ""
    print(f"trained in {time.monotonic() - started:.2f} s on {len(train)} reviews: val_accuracy "
          f"{val_accuracy:.3f}, {len(model['log_likelihood'])} n-grams; wrote {path}{broken}", flush=True)


if __name__ == "__main__":
    main()
