"""drift.yaml: defaults, per-column overrides and the retraining trigger.

Every key is optional; an unknown key or a wrong value is a SpecError that
names the file, the line and the key. docs/drift.md lists each default and
why it was chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlfleet.core.base.errors import SpecError
from mlfleet.core.base.yamlsource import Located, read_yaml

NUMERIC_TESTS = ("ks", "wasserstein", "psi", "js")
CATEGORICAL_TESTS = ("chi2", "js", "psi")
PVALUE_TESTS = ("ks", "chi2")
POLICIES = ("bonferroni", "bh", "none")


@dataclass(frozen=True)
class ColumnRule:
    """What the user chose for one column (None: the default rule decides)."""

    kind: str | None = None  # numeric | categorical
    test: str | None = None
    threshold: float | None = None  # alpha for ks/chi2, a distance for the others
    bins: int | None = None
    ignore: bool = False


@dataclass(frozen=True)
class DriftConfig:
    drift_share: float = 0.5
    alpha: float = 0.05
    multiple_testing: str = "bonferroni"
    bins: int = 10
    psi_epsilon: float = 1e-4
    wasserstein_std_floor: float = 1e-6
    null_rate_threshold: float = 0.1
    small_sample: int = 1000
    low_cardinality: int = 5
    max_categories: int = 100_000
    thresholds: dict[str, float] = field(default_factory=lambda: {"psi": 0.2, "wasserstein": 0.1, "js": 0.1})
    columns: dict[str, ColumnRule] = field(default_factory=dict)
    on_drift_submit: str | None = None  # an absolute path to a job spec
    memory_limit: str | None = "2GB"
    threads: int | None = None
    source: str | None = None

    def rule(self, column: str) -> ColumnRule:
        return self.columns.get(column, ColumnRule())

    def summary(self) -> dict[str, Any]:
        """What a report records of the configuration it was made with."""
        return {"drift_share": self.drift_share, "alpha": self.alpha, "multiple_testing": self.multiple_testing,
                "bins": self.bins, "psi_epsilon": self.psi_epsilon,
                "wasserstein_std_floor": self.wasserstein_std_floor,
                "null_rate_threshold": self.null_rate_threshold, "small_sample": self.small_sample,
                "low_cardinality": self.low_cardinality, "max_categories": self.max_categories,
                "thresholds": dict(self.thresholds),
                "columns": {k: {f: getattr(v, f) for f in ("kind", "test", "threshold", "bins", "ignore")}
                            for k, v in self.columns.items()},
                "on_drift_submit": self.on_drift_submit, "source": self.source}


_TOP_KEYS = {"drift_share", "alpha", "multiple_testing", "bins", "psi_epsilon", "wasserstein_std_floor",
             "null_rate_threshold", "small_sample", "low_cardinality", "max_categories", "thresholds", "columns",
             "on_drift", "engine"}


def load_drift_config(path: str | Path | None) -> DriftConfig:
    """The defaults, or the defaults overridden by the YAML file at ``path``."""
    if path is None:
        return DriftConfig()
    located = read_yaml(path, allow_empty=True)
    data = located.data
    if data is None:
        return DriftConfig(source=str(Path(path).absolute()))
    check = _Checker(located)
    if not isinstance(data, dict):
        check.fail((), "must be a mapping of settings", "see configs/drift.yaml")
    for key in data:
        if key not in _TOP_KEYS:
            check.fail((key,), "unknown setting", f"known settings: {', '.join(sorted(_TOP_KEYS))}")
    config = DriftConfig(source=str(Path(path).absolute()))
    values: dict[str, Any] = {}
    for key, hi, open_low in (("drift_share", 1.0, True), ("alpha", 1.0, True), ("psi_epsilon", 1.0, True),
                              ("wasserstein_std_floor", None, True), ("null_rate_threshold", 1.0, False)):
        if key in data:
            values[key] = check.number((key,), data[key], 0.0, hi, open_low)
    for key, lo in (("bins", 2), ("small_sample", 0), ("low_cardinality", 0), ("max_categories", 1)):
        if key in data:
            values[key] = check.integer((key,), data[key], lo)
    if "multiple_testing" in data:
        values["multiple_testing"] = check.choice(("multiple_testing",), data["multiple_testing"], POLICIES)
    if "thresholds" in data:
        thresholds = dict(config.thresholds)
        block = check.mapping(("thresholds",), data["thresholds"])
        for name, value in block.items():
            if name not in thresholds:
                check.fail(("thresholds", name), "no such distance",
                           "thresholds apply to psi, wasserstein and js (p-value tests use alpha)")
            thresholds[name] = check.number(("thresholds", name), value, 0.0, None)
        values["thresholds"] = thresholds
    if "columns" in data:
        values["columns"] = {str(name): _column_rule(check, str(name), rule)
                             for name, rule in check.mapping(("columns",), data["columns"]).items()}
    if "on_drift" in data:
        block = check.mapping(("on_drift",), data["on_drift"])
        for key in block:
            if key != "submit":
                check.fail(("on_drift", key), "unknown setting", "on_drift takes submit: path/to/job.yaml")
        if "submit" in block:
            spec = block["submit"]
            if not isinstance(spec, str) or not spec:
                check.fail(("on_drift", "submit"), "must be the path of a job spec")
            spec_path = (Path(path).absolute().parent / Path(spec).expanduser())
            if not spec_path.is_file():
                check.fail(("on_drift", "submit"), f"no job spec at {spec_path}", "the path is relative to this file")
            values["on_drift_submit"] = str(spec_path)
    if "engine" in data:
        block = check.mapping(("engine",), data["engine"])
        for key, value in block.items():
            if key == "memory_limit":
                if value is not None and not isinstance(value, str):
                    check.fail(("engine", key), "must be a size such as 2GB or 512MB")
                values["memory_limit"] = value
            elif key == "threads":
                values["threads"] = None if value is None else check.integer(("engine", key), value, 1)
            else:
                check.fail(("engine", key), "unknown setting", "engine takes memory_limit and threads")
    return replace(config, **values)


def _column_rule(check: "_Checker", name: str, rule: Any) -> ColumnRule:
    where = ("columns", name)
    block = check.mapping(where, rule)
    values: dict[str, Any] = {}
    for key, value in block.items():
        if key == "kind":
            values["kind"] = check.choice(where + (key,), value, ("numeric", "categorical"))
        elif key == "test":
            values["test"] = check.choice(where + (key,), value, tuple(dict.fromkeys(NUMERIC_TESTS + CATEGORICAL_TESTS)))
        elif key == "threshold":
            values["threshold"] = check.number(where + (key,), value, 0.0, None)
        elif key == "bins":
            values["bins"] = check.integer(where + (key,), value, 2)
        elif key == "ignore":
            if not isinstance(value, bool):
                check.fail(where + (key,), "must be true or false")
            values["ignore"] = value
        else:
            check.fail(where + (key,), "unknown setting", "a column takes kind, test, threshold, bins and ignore")
    column = ColumnRule(**values)
    if column.kind == "numeric" and column.test == "chi2":
        check.fail(where + ("test",), "chi2 is a test for categories", "use ks, wasserstein, psi or js for numbers")
    if column.kind == "categorical" and column.test in ("ks", "wasserstein"):
        check.fail(where + ("test",), f"{column.test} needs numbers", "use chi2, js or psi for categories")
    return column


class _Checker:
    def __init__(self, located: Located) -> None:
        self.located = located

    def fail(self, parts: tuple[Any, ...], problem: str, hint: str = "") -> None:
        raise SpecError(self.located.path, self.located.line_of(parts), ".".join(map(str, parts)) or None,
                        problem, hint)

    def number(self, parts: tuple[Any, ...], value: Any, lo: float, hi: float | None, open_low: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            self.fail(parts, f"must be a number, got {value!r}")
        if value < lo or (open_low and value == lo) or (hi is not None and value > hi):
            low = f"({lo}" if open_low else f"[{lo}"
            self.fail(parts, f"must be in {low}, {hi if hi is not None else 'inf'}], got {value}")
        return float(value)

    def integer(self, parts: tuple[Any, ...], value: Any, lo: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(parts, f"must be a whole number, got {value!r}")
        if value < lo:
            self.fail(parts, f"must be at least {lo}, got {value}")
        return int(value)

    def choice(self, parts: tuple[Any, ...], value: Any, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            self.fail(parts, f"must be one of {', '.join(allowed)}, got {value!r}")
        return str(value)

    def mapping(self, parts: tuple[Any, ...], value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(parts, "must be a mapping")
        return value
