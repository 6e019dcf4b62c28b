"""What a run's step keys are made of, measured once when the run starts: code, environment, input files.

The planner is pure (plan.py); this is the part that reads the disk. For
each job step: its workdir's code snapshot without the pipeline's declared
data paths (``snapshot(..., exclude=code_excludes(...))``: its sha256 is the
key's ``code`` part, the archive stays in the code cache for the bundle),
its environment's identity (the ``environment:`` block and the requirement
files it names, read from that snapshot: a lockfile changed by one byte is
a new environment), and the content hash of each workdir or host input.
A gate's champion enters as the model file behind the alias now (the
service reads it from the registry and hands it in).

Measured once per run, not per plan: the code a run's steps run is the
code as it was when the run started, as a job's is at submit.

Host paths (``/srv/...``) are read on the controller's machine. Workdir
inputs may be globs: their hash covers every file they match, by relative
path, so a file added or removed changes it; nothing matching is the word
``missing``, a key part like any other.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlfleet.core.base.errors import UsageError
from mlfleet.core.base.models import to_plain
from mlfleet.core.environments.prepare import requirements_text
from mlfleet.core.jobs.snapshot import Snapshot, snapshot
from mlfleet.core.pipelines.keys import MISSING, StepFacts, champion_input, sha256_of
from mlfleet.core.pipelines.models import Pipeline, Step
from mlfleet.core.pipelines.outputs import OutputError, hash_output
from mlfleet.core.pipelines.spec import code_excludes
from mlfleet.core.pipelines.state import OutputDigest

_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class Measured:
    """The facts of every step, and the code snapshots made on the way (for the job steps' bundles)."""

    facts: dict[str, StepFacts]
    code: dict[str, Snapshot] = field(default_factory=dict)  # job step -> its code-only snapshot
    matched: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # job step -> input -> workdir files


def measure(pipeline: Pipeline, cache_dir: Path, private: tuple[Path, ...],
            champions: Mapping[str, str]) -> Measured:
    """Every step's :class:`StepFacts` (blocking: run it in a thread). ``champions``: NAME@ALIAS -> identity."""
    facts: dict[str, StepFacts] = {}
    code: dict[str, Snapshot] = {}
    matched: dict[str, dict[str, list[str]]] = {}
    snapshots: dict[tuple[str, tuple[str, ...]], Snapshot] = {}
    for name, step in pipeline.steps.items():
        files: dict[str, str] = {}
        env_hash = code_hash = None
        if step.job is not None:
            workdir = Path(step.job.workdir)
            excludes = code_excludes(pipeline, name)
            made = snapshots.get((step.job.workdir, excludes))
            if made is None:
                made = snapshots[(step.job.workdir, excludes)] = snapshot(workdir, cache_dir, private, exclude=excludes)
            code[name] = made
            code_hash = made.sha256
            env_hash = environment_identity(step, made.path)
            matched[name] = {}
            for item in step.inputs:
                if item.kind == "workdir":
                    files[item.text], matched[name][item.text] = workdir_input_hash(workdir, item.text)
        for item in step.inputs:
            if item.kind == "host":
                files[item.text] = host_input_hash(item.text)
        champion = champion_input(step)
        if champion is not None and step.gate is not None:
            files[champion] = champions.get(step.gate.champion, "none")
        facts[name] = StepFacts(env_hash=env_hash, code_hash=code_hash, files=files)
    return Measured(facts=facts, code=code, matched=matched)


def environment_identity(step: Step, archive: Path) -> str | None:
    """The key's ``env`` part: the ``environment:`` block and the requirement files it names; None: the node's own."""
    job = step.job
    if job is None or job.environment is None or not job.builds_environment:
        return None
    try:
        text, project = requirements_text(job.environment, archive)
    except Exception as exc:  # a requirements file missing from the snapshot: the job's own check says it at launch
        text, project = f"unreadable: {exc}", None
    return sha256_of({"environment": to_plain(job.environment), "requirements": text,
                      "project": list(project) if project else None})


def workdir_input_hash(workdir: Path, text: str) -> tuple[str, list[str]]:
    """The content hash of a workdir input (a file, a folder or a glob) and the workdir files it stands for."""
    clean = text[2:] if text.startswith("./") else text
    if not _GLOB_CHARS & set(clean):
        try:
            digest = hash_output(workdir, text, clean.rstrip("/"))
        except OutputError as exc:
            if exc.problem.startswith("is missing") or "does not exist" in exc.problem or "missing" in exc.problem:
                return MISSING, []
            raise UsageError(f"input {text} of the workdir {workdir}: {exc.problem}") from None
        return content_identity(digest), [clean.rstrip("/")]
    root = os.path.realpath(workdir)
    found = sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, clean), recursive=True)
                   if os.path.isfile(p) and not os.path.islink(p))
    if not found:
        return MISSING, []
    lines = hashlib.sha256()
    for rel in found:
        lines.update(f"{rel}\0{hash_output(workdir, text, rel).sha256}\n".encode("utf-8", "surrogateescape"))
    return lines.hexdigest(), found


def content_identity(digest: OutputDigest) -> str:
    """An input's key part: a file's sha256, or a folder's tree hash marked as a folder's.

    Why the mark: a folder's tree hash is the sha256 of its listing
    (``a.csv\\0SHA\\n``...), so a file holding exactly that listing hashes
    the same; a step that reads ``data/a.csv`` computes something else when
    ``data`` is that file.
    """
    if digest.files is None:
        return digest.sha256
    return hashlib.sha256(b"folder\0" + digest.sha256.encode("ascii")).hexdigest()


def host_input_hash(path: str) -> str:
    """The content hash of a host path input, read on the controller's machine; ``missing`` when it is not there."""
    try:
        return content_identity(hash_output(Path("/"), path, path.lstrip("/")))
    except OutputError as exc:
        if "missing" in exc.problem:
            return MISSING
        raise UsageError(f"input {path}: {exc.problem}") from None


def facts_summary(measured: Measured) -> dict[str, Any]:
    """What ``pipeline show`` may print of the measuring: each job step's code snapshot and what it left out."""
    return {name: {"code_hash": snap.sha256, "files": snap.files, "skipped": snap.skipped}
            for name, snap in measured.code.items()}
