"""A job step's bundle: what is shipped to run it, its code with its inputs put in place.

The step's key has the code without the pipeline's declared data paths
(core/pipelines/facts.py); what the job needs to run is that code *and*
its data: its own workdir inputs, read from the workdir, and each upstream
output it reads, from where the controller keeps it
(core/pipelines/output_store.py), placed at the path its producer declared
(``prepare`` declared ``data: data/iris.csv``; train finds
``data/iris.csv``). One archive, so the node gets code and data the way it
already gets code: once per content, verified by its sha256.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mlfleet.core.base.errors import UsageError
from mlfleet.core.jobs.snapshot import Snapshot, snapshot
from mlfleet.core.pipelines.models import Pipeline
from mlfleet.core.pipelines.spec import code_excludes
from mlfleet.core.pipelines.state import OutputDigest


def bundle_sources(pipeline: Pipeline, step: str, matched: Mapping[str, list[str]],
                   upstream: Mapping[tuple[str, str], OutputDigest]) -> dict[str, Path]:
    """Workdir-relative path -> absolute source, for every file or folder the step reads.

    ``matched``: each workdir input as written -> the workdir files it
    matched when the run was measured; ``upstream``: (step, output) -> the
    digest of that output as the controller keeps it.
    """
    job = pipeline.steps[step].job
    assert job is not None
    workdir = Path(job.workdir)
    extra: dict[str, Path] = {}
    for files in matched.values():
        for rel in files:
            extra[rel] = workdir / rel
    for item in pipeline.steps[step].inputs:
        if item.kind != "step":
            continue
        digest = upstream.get((item.step or "", item.output or ""))
        if digest is None or digest.stored is None:
            raise UsageError(f"step {step} reads {item.text}, which the controller does not keep "
                             "(its step has not succeeded in this run)")
        extra[_clean(digest.path)] = Path(digest.stored)
    return extra


def make_bundle(pipeline: Pipeline, step: str, cache_dir: Path, private: tuple[Path, ...],
                extra: Mapping[str, Path]) -> Snapshot:
    """The archive the step's job ships (blocking: run it in a thread); without inputs, the code snapshot itself."""
    job = pipeline.steps[step].job
    assert job is not None
    if not extra:  # the code snapshot itself (the one facts.py made: same bytes, same archive)
        return snapshot(Path(job.workdir), cache_dir, private, exclude=code_excludes(pipeline, step))
    return snapshot(Path(job.workdir), cache_dir, private, exclude=code_excludes(pipeline, step), extra=dict(extra))


def _clean(path: str) -> str:
    text = path[2:] if path.startswith("./") else path
    return text.strip("/")
