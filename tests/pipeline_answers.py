"""Answers of the pipelines service, written out in the shapes docs/pipelines.md fixes ("The service", RPCs).

Data, not a stand-in for a component: the CLI's pages and the TUI's
Pipelines view are pure functions of these shapes, and their tests feed
them these literals. The stories in tests/test_pipeline_cli_story.py get
the same shapes from a real controller.
"""

from __future__ import annotations

from typing import Any

GATE_DECISION: dict[str, Any] = {  # to_plain(GateDecision), as a gate step's detail
    "passed": False, "challenger": "run ja1b2c3d4-1", "champion": "iris@production (version 3, run j0ff1ce00-1)",
    "requirements": [
        {"text": "metrics.val_accuracy.max >= champion.metrics.val_accuracy.max + 0.005", "passed": False,
         "left": 0.93, "right": 0.935, "verdict": "0.93 >= 0.935 fails"},
        {"text": "metrics.val_loss.min <= champion.metrics.val_loss.min * 1.1", "passed": True,
         "left": 0.21, "right": 0.2310000000000001, "verdict": "0.21 <= 0.231 holds"},
    ],
    "summary": "1 of 2 requirements failed: metrics.val_accuracy.max >= champion.metrics.val_accuracy.max + 0.005",
}

RUN: dict[str, Any] = {  # pipeline_show of a run whose gate did not pass
    "run_id": "p7f3a9c01", "name": "iris-closed-loop", "project": "demo", "state": "succeeded",
    "trigger": "schedule", "cause": {"schedule": "0 3 * * *"}, "actor": "ana", "reason": None,
    "created_at": "2026-12-01T03:00:00+00:00", "ended_at": "2026-12-01T03:04:10+00:00",
    "upstream": {"prepare": [], "train": ["prepare"], "drift": ["train"], "gate": ["drift", "train"],
                 "register": ["gate", "train"], "promote": ["register", "gate"]},
    "steps": [
        {"step": "prepare", "kind": "job", "state": "cached", "key": "3f9a0c1d2e4b5a6978ff",
         "reasons": ["cached: no part of its key changed"], "forced": False, "job_id": None, "run": "j5e5e5e5e-1",
         "source_run": "p0a0a0a01", "started_at": None, "ended_at": "2026-12-01T03:00:01+00:00",
         "outputs": [{"name": "data", "path": "data/iris.csv", "sha256": "ab12cd34ef56ab12cd34", "size": 61440,
                      "files": None}], "detail": {}},
        {"step": "train", "kind": "job", "state": "succeeded", "key": "9e8d7c6b5a4f3e2d1c0b",
         "reasons": ["params.lr changed 0.5 → 0.3"], "forced": False, "job_id": "ja1b2c3d4", "run": "ja1b2c3d4-1",
         "source_run": None, "started_at": "2026-12-01T03:00:02+00:00", "ended_at": "2026-12-01T03:03:30+00:00",
         "outputs": [{"name": "model", "path": "out/model.npz", "sha256": "77aa88bb99cc00dd11ee", "size": 2048,
                      "files": None}], "detail": {}},
        {"step": "drift", "kind": "drift", "state": "succeeded", "key": "c0ffee00112233445566",
         "reasons": ["always runs: it reads a deployment's live traffic"], "forced": False, "job_id": None,
         "run": None, "source_run": None, "started_at": "2026-12-01T03:03:31+00:00",
         "ended_at": "2026-12-01T03:03:40+00:00", "outputs": [],
         "detail": {"report": "d0007", "drifted": False, "share": 0.0}},
        {"step": "gate", "kind": "gate", "state": "gate-failed", "key": "deadbeef001122334455",
         "reasons": ["upstream step train changed (key 1a2b3c4d → 9e8d7c6b)"], "forced": False, "job_id": None,
         "run": None, "source_run": None, "started_at": "2026-12-01T03:03:41+00:00",
         "ended_at": "2026-12-01T03:03:41+00:00", "outputs": [], "detail": GATE_DECISION},
        {"step": "register", "kind": "register", "state": "skipped", "key": None,
         "reasons": ["gate gate did not pass"], "forced": False, "job_id": None, "run": None, "source_run": None,
         "started_at": None, "ended_at": "2026-12-01T03:03:41+00:00", "outputs": [], "detail": {}},
        {"step": "promote", "kind": "promote", "state": "skipped", "key": None,
         "reasons": ["gate gate did not pass"], "forced": False, "job_id": None, "run": None, "source_run": None,
         "started_at": None, "ended_at": "2026-12-01T03:03:41+00:00", "outputs": [], "detail": {}},
    ],
}

RUNNING: dict[str, Any] = {  # pipeline_show of a run in progress, its first step forced
    "run_id": "p8b4c0d12", "name": "iris-closed-loop", "project": "demo", "state": "running",
    "trigger": "manual", "cause": None, "actor": "bo", "reason": "new labels",
    "created_at": "2026-12-02T09:00:00+00:00", "ended_at": None,
    "upstream": {"prepare": [], "train": ["prepare"]},
    "steps": [
        {"step": "prepare", "kind": "job", "state": "succeeded", "key": "11112222333344445555", "reasons": [],
         "forced": True, "job_id": "jb0b0b0b0", "run": "jb0b0b0b0-1", "source_run": None,
         "started_at": "2026-12-02T09:00:01+00:00", "ended_at": "2026-12-02T09:01:00+00:00", "outputs": [],
         "detail": {}},
        {"step": "train", "kind": "job", "state": "running", "key": "66667777888899990000",
         "reasons": ["input prepare.outputs.data changed (sha256 ab12cd34… → 9f0e1d2c…)"], "forced": False,
         "job_id": "jc1c1c1c1", "run": "jc1c1c1c1-1", "source_run": None,
         "started_at": "2026-12-02T09:01:01+00:00", "ended_at": None, "outputs": [], "detail": {}},
    ],
}

LIST: list[dict[str, Any]] = [  # pipeline_list, newest first
    {"run_id": "p8b4c0d12", "name": "iris-closed-loop", "project": "demo", "state": "running", "trigger": "manual",
     "actor": "bo", "created_at": "2026-12-02T09:00:00+00:00", "ended_at": None,
     "steps": {"succeeded": 1, "running": 1}},
    {"run_id": "p7f3a9c01", "name": "iris-closed-loop", "project": "demo", "state": "succeeded",
     "trigger": "schedule", "actor": "ana", "created_at": "2026-12-01T03:00:00+00:00",
     "ended_at": "2026-12-01T03:04:10+00:00",
     "steps": {"cached": 1, "succeeded": 2, "gate-failed": 1, "skipped": 2}},
]

WHY: dict[str, Any] = {"step": "train", "state": "succeeded", "key": "9e8d7c6b5a4f3e2d1c0b",
                       "reasons": ["params.lr changed 0.5 → 0.3", "code changed (sha256 0a1b2c3d → 4e5f6a7b)"],
                       "compared_with": "p0a0a0a01"}

CANCEL: dict[str, Any] = {"run_id": "p8b4c0d12", "state": "cancelled", "cancelled": ["train"]}

TRIGGERS: dict[str, Any] = {
    "armed": [{"name": "iris-closed-loop", "project": "demo",
               "on": {"schedule": ["0 3 * * *"], "data": [], "drift": {"deployment": "iris"}, "after": []},
               "concurrency": "skip", "next": {"schedule": "2026-12-03T03:00:00+00:00"},
               "armed_at": "2026-11-30T12:00:00+00:00", "armed_by": "ana"}],
    "history": [
        {"at": "2026-12-02T03:00:00+00:00", "name": "iris-closed-loop", "trigger": "schedule",
         "cause": {"schedule": "0 3 * * *"}, "outcome": "skipped", "run_id": None},
        {"at": "2026-12-01T03:00:00+00:00", "name": "iris-closed-loop", "trigger": "schedule",
         "cause": {"schedule": "0 3 * * *"}, "outcome": "started", "run_id": "p7f3a9c01"},
    ],
}
