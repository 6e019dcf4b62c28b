"""Where a job's data may go, from ``policy.yaml``'s ``residency:`` (pure).

A rule matches a job when everything it names matches: its project, every
tag it gives (exact values), and its ``inputs`` glob against at least one
of the paths the job declares in ``inputs:`` (``**`` crosses folders, ``*``
and ``?`` stay inside one). Every matching rule must hold, so the regions
a job may run in are the intersection of theirs; no matching rule means
anywhere. The scheduler keeps the job off hosts outside them (a host's
region is its ``region_label`` label) and submit refuses a job whose own
constraints point outside them.
"""

from __future__ import annotations

import functools
import posixpath
import re
from collections.abc import Iterable, Mapping

from mlfleet.core.team.policy import LoadedPolicy, ResidencyRule

Allowed = tuple[frozenset[str], str]  # (regions, the rules in words: "policy.yaml:12 (residency[0])")


def allowed_regions(loaded: LoadedPolicy, project: str, tags: Mapping[str, str], inputs: Iterable[str],
                    workdir: str | None = None) -> Allowed | None:
    """The regions a job may run in and the rules that say so; None when no rule matches it.

    An input written relative to the workdir is matched as written and, with
    ``workdir`` given, as the absolute path it names too: a rule on
    ``/data/eu/**`` cannot be slipped past by ``cd /data/eu`` and ``inputs: [x]``.
    The regions may be empty: two rules that share none leave the job nowhere to run.
    """
    policy = loaded.policy
    if policy is None or not policy.residency:
        return None
    paths = _paths(inputs, workdir)
    regions: frozenset[str] | None = None
    wheres: list[str] = []
    for i, rule in enumerate(policy.residency):
        if _matches(rule, project, tags, paths):
            regions = frozenset(rule.regions) if regions is None else regions & frozenset(rule.regions)
            wheres.append(loaded.where("residency", i))
    if regions is None:
        return None
    return regions, ", ".join(wheres)


def region_label(loaded: LoadedPolicy) -> str:
    """The host label that names a host's region (``region`` unless the policy says otherwise)."""
    return loaded.policy.region_label if loaded.policy is not None else "region"


def regions_words(regions: frozenset[str]) -> str:
    return ", ".join(sorted(regions)) if regions else "no region (the rules share none)"


def _matches(rule: ResidencyRule, project: str, tags: Mapping[str, str], paths: list[str]) -> bool:
    if rule.project is not None and rule.project != project:
        return False
    if any(tags.get(key) != value for key, value in rule.tags.items()):
        return False
    if rule.inputs is not None:
        pattern = glob_regex(rule.inputs)
        return any(pattern.fullmatch(path) for path in paths)
    return True


def _paths(inputs: Iterable[str], workdir: str | None) -> list[str]:
    """Each input as written, and the absolute path it names (``//``, ``.`` and ``..`` folded): a rule on
    ``/data/eu/**`` is not slipped past by ``/data//eu/x`` or ``/data/us/../eu/x`` either."""
    out: list[str] = []
    for path in inputs:
        out.append(path)
        if path.startswith("/"):
            named = posixpath.normpath(path)
        elif workdir:
            named = posixpath.normpath(posixpath.join(workdir, path))
        else:
            continue
        out.append("/" + named.lstrip("/"))  # normpath keeps a leading "//" (POSIX leaves its meaning open)
    return out


@functools.lru_cache(maxsize=256)
def glob_regex(pattern: str) -> re.Pattern[str]:
    """A path glob as a regex: ``**`` any depth (``a/**/b`` also matches ``a/b``), ``*`` and ``?`` within a folder."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out))
