"""Fixed answers in the shapes the controller sends, for the snapshot tests (stable images)."""

from __future__ import annotations

from typing import Any

GIB = 1024**3


def _gpu(index: int, util: float, used_gib: float, procs: int, run_id: str | None = None) -> dict[str, Any]:
    return {"index": index, "uuid": f"GPU-{index}", "name": "NVIDIA H100 80GB HBM3", "utilization": util,
            "memory_total": 80 * GIB, "memory_used": int(used_gib * GIB), "memory_free": int((80 - used_gib) * GIB),
            "temperature": 40.0 + index * 11, "power_draw": 120.0 + util * 5, "power_limit": 700.0,
            "processes": [{"pid": 1000 + p, "used_memory": GIB, "name": "python", "run_id": run_id if p == 0 else None}
                          for p in range(procs)]}


def _telemetry(cpu: float, mem_gib: float, gpu_state: str, gpus: list[dict[str, Any]]) -> dict[str, Any]:
    return {"seq": 42, "ts": 1_700_000_000.0, "cpu_percent": cpu, "cpu_count": 64, "load1": 12.5,
            "memory_total": 512 * GIB, "memory_used": int(mem_gib * GIB), "swap_used": 0,
            "disk_total": 4000 * GIB, "disk_used": 1000 * GIB, "net_rx_bps": 1e6, "net_tx_bps": 2e5,
            "gpu_state": gpu_state, "gpu_message": "", "gpus": gpus}


def _history(n: int, base: float, swing: float, step: int = 7) -> list[float]:
    return [base + swing * ((i * step) % 11) / 10 for i in range(n)]


FIXED_HOSTS: list[dict[str, Any]] = [
    {"name": "gpu-box-1", "kind": "ssh", "state": "up", "message": "", "agent_version": "0.1.0",
     "last_seen": 1_700_000_000.0, "seen_ago": 0.3, "stale": False, "labels": {"region": "eu-west", "rack": "a3"},
     "running_jobs": 2, "info": {},
     "simulated": True, "drained": None,
     "telemetry": _telemetry(63.4, 201.5, "ok", [_gpu(0, 97, 71.2, 2, "jc0ffee02-2"), _gpu(1, 12, 3.5, 0)]),
     "history": {"cpu_percent": _history(60, 40, 30), "memory_percent": _history(60, 35, 5, step=3)}},
    {"name": "local", "kind": "local", "state": "up", "message": "", "agent_version": "0.1.0",
     "last_seen": 1_700_000_000.0, "seen_ago": 6.4, "stale": True,  # up, but it missed its last polls
     "labels": {}, "running_jobs": 0, "info": {}, "simulated": False,
     "drained": "by ana: disk swap", "telemetry": _telemetry(3.2, 4.25, "no_driver", []),
     "history": {"cpu_percent": _history(60, 2, 5), "memory_percent": _history(60, 1, 1, step=1)}},
    {"name": "cloud-a100", "kind": "ssh", "state": "unreachable", "agent_version": None, "last_seen": None,
     "seen_ago": None, "stale": True,
     "message": "ssh: connection refused (cloud-a100:22); is the VM running?", "labels": {"region": "us-east"},
     "running_jobs": 0, "info": {}, "simulated": False, "drained": None, "telemetry": None,
     "history": {"cpu_percent": [], "memory_percent": []}},
]

GPU_HISTORY = {0: _history(40, 50, 50), 1: _history(40, 5, 20, step=3)}

FIXED_JOBS: list[dict[str, Any]] = [  # newest first, as jobs_list sends them
    {"job_id": "jc0ffee03", "name": "sweep-lr-3", "project": "vision", "owner": "ana", "state": "pending",
     "reason": "waiting for 4 GPUs with 40 GiB free (largest free: 2 on gpu-box-1)", "priority": 5, "attempt": 0,
     "max_attempts": 1, "host": None, "gpus": None, "run_id": None, "submitted_at": "2024-05-01T10:02:00+00:00",
     "started_at": None, "finished_at": None, "exit_code": None},
    {"job_id": "jc0ffee02", "name": "train-resnet", "project": "vision", "owner": "ana", "state": "failed",
     "reason": "exited 3", "priority": 0, "attempt": 2, "max_attempts": 2, "host": "gpu-box-1", "gpus": [0, 1],
     "run_id": "jc0ffee02-2", "submitted_at": "2024-05-01T10:00:00+00:00",
     "started_at": "2024-05-01T10:00:05+00:00", "finished_at": "2024-05-01T10:12:30+00:00", "exit_code": 3},
    {"job_id": "jc0ffee01", "name": "hello", "project": "default", "owner": "bo", "state": "succeeded",
     "reason": "exited 0", "priority": 0, "attempt": 1, "max_attempts": 1, "host": "local", "gpus": [],
     "run_id": "jc0ffee01-1", "submitted_at": "2024-05-01T09:00:00+00:00",
     "started_at": "2024-05-01T09:00:01+00:00", "finished_at": "2024-05-01T09:00:04+00:00", "exit_code": 0},
]
JOB_METRICS = {"jc0ffee02-2": "loss 0.6412 @1200"}

WHY_PENDING = {
    **FIXED_JOBS[0], "priority": 5, "spec": {}, "events": [
        {"ts": "2024-05-01T10:02:00+00:00", "state": "pending", "reason": "submitted", "host": None, "run_id": None}],
    "runs": [], "why_pending": [
        {"host": "gpu-box-1", "check": "gpus", "message": "needs 4 GPUs with 40 GiB free; 2 free (GPU 1, 3)"},
        {"host": "local", "check": "drained", "message": "drained by ana: disk swap"},
        {"host": "cloud-a100", "check": "state", "message": "unreachable"}],
}


def _run(run_id: str, name: str, state: str, lr: float, batch: int, loss: float, acc: float,
         tags: dict[str, str]) -> dict[str, Any]:
    return {"run_id": run_id, "job_id": run_id.rsplit("-", 1)[0], "name": name, "project": "vision", "owner": "ana",
            "host": "gpu-box-1", "gpus": [0, 1], "state": state, "created_at": "2024-05-01T10:00:00+00:00",
            "started_at": "2024-05-01T10:00:05+00:00", "finished_at": "2024-05-01T10:12:30+00:00", "exit_code": 0,
            "points": 240, "params": {"lr": lr, "batch_size": batch, "optimizer": "adamw"}, "tags": tags,
            "metrics": {"loss": {"min": loss, "max": 2.3, "last": loss, "last_step": 1200, "points": 120},
                        "val/acc": {"min": 0.1, "max": acc, "last": acc, "last_step": 1200, "points": 120}}}


FIXED_RUNS: list[dict[str, Any]] = [
    _run("ja1-1", "resnet-lr3", "succeeded", 0.003, 256, 0.412, 0.781, {"sweep": "lr"}),
    _run("ja2-1", "resnet-lr1", "succeeded", 0.001, 256, 0.455, 0.764, {"sweep": "lr"}),
    _run("ja3-1", "resnet-big", "failed", 0.001, 512, 0.97, 0.52, {}),
]


def _curve(n: int, start: float, end: float) -> dict[str, list[float]]:
    steps = [i * 10 for i in range(n)]
    values = [start + (end - start) * (1 - (1 - i / (n - 1)) ** 3) for i in range(n)]
    return {"step": steps, "min": values, "max": values, "last": values}


FIXED_COMPARISON: dict[str, Any] = {
    "runs": [{k: r[k] for k in ("run_id", "name", "host", "gpus", "state", "started_at", "finished_at")}
             for r in FIXED_RUNS[:2]],
    "metrics": {
        "loss": {"curves": {"ja1-1": _curve(121, 2.3, 0.412), "ja2-1": _curve(121, 2.3, 0.455)},
                 "best": {"ja1-1": {"value": 0.412, "step": 1200, "mode": "min"},
                          "ja2-1": {"value": 0.455, "step": 1200, "mode": "min"}}},
        "val/acc": {"curves": {"ja1-1": _curve(121, 0.1, 0.781), "ja2-1": _curve(121, 0.1, 0.764)},
                    "best": {"ja1-1": {"value": 0.781, "step": 1200, "mode": "max"},
                             "ja2-1": {"value": 0.764, "step": 1200, "mode": "max"}}},
    },
    "params": {"differ": {"lr": {"ja1-1": 0.003, "ja2-1": 0.001}}, "same": {"batch_size": 256, "optimizer": "adamw"}},
}
FIXED_LINEAGE: dict[str, dict[str, Any]] = {
    "ja1-1": {"git_commit": "4f2c9e1a7b3d5e6f", "git_dirty": False, "spec_hash": "aa11bb22cc33dd44",
              "inputs": [{"path": "data/train.parquet", "sha256": "9e8d7c6b5a4f3e2d", "size": 3 * GIB}],
              "python": "3.11.9", "gpu_hours": 0.42, "gpu_util_mean": 88.5},
    "ja2-1": {"git_commit": "4f2c9e1a7b3d5e6f", "git_dirty": True, "diff_hash": "77aa88bb99cc00dd",
              "spec_hash": "aa11bb22cc33dd55",
              "inputs": [{"path": "data/train.parquet", "sha256": "9e8d7c6b5a4f3e2d", "size": 3 * GIB}],
              "python": "3.11.9", "gpu_hours": 0.40},
}

FIXED_DRIFT_LIST: list[dict[str, Any]] = [
    {"report_id": "d0002", "created_at": "2024-05-02T08:00:00+00:00", "reference": "train.parquet",
     "current": "serving-0502.parquet", "drifted": True, "drifted_columns": 2, "columns": 5, "column_count": 5,
     "compared_columns": 4, "drift_share": 0.5, "drift_share_threshold": 0.5,
     "run_id": "ja1-1", "deployment": "resnet-prod"},
    {"report_id": "d0001", "created_at": "2024-05-01T08:00:00+00:00", "reference": "train.parquet",
     "current": "serving-0501.parquet", "drifted": False, "drifted_columns": 0, "columns": 4, "column_count": 4,
     "compared_columns": 4, "drift_share": 0.0, "drift_share_threshold": 0.5,
     "run_id": "ja1-1", "deployment": "resnet-prod"},
]

FIXED_DRIFT_REPORT: dict[str, Any] = {
    **FIXED_DRIFT_LIST[0], "columns": [
        {"column": "age", "kind": "numeric", "test": "ks", "statistic": 0.31, "threshold": 0.1, "drifted": True,
         "ref_type": "DOUBLE", "cur_type": "DOUBLE",
         "stats": {"mean_ref": 41.2, "mean_cur": 48.9, "median_ref": 40.0, "median_cur": 49.5, "null_rate_ref": 0.0,
                   "null_rate_cur": 0.2, "ks_d": 0.31}, "notes": ["the mean moved up by 7.7"],
         "histogram": {"edges": [0, 20, 40, 60, 80, 100], "reference": [0.1, 0.35, 0.35, 0.15, 0.05],
                       "current": [0.05, 0.2, 0.35, 0.3, 0.1]}},
        {"column": "income", "kind": "numeric", "test": "wasserstein", "statistic": 0.04, "threshold": 0.1,
         "drifted": False, "stats": {}, "notes": [],
         "histogram": {"edges": [0, 1, 2, 3], "reference": [0.3, 0.4, 0.3], "current": [0.3, 0.38, 0.32]}},
        {"column": "country", "kind": "categorical", "test": "chi2", "statistic": 0.22, "threshold": 0.05,
         "drifted": True, "stats": {}, "notes": ["a new category: BR"],
         "histogram": {"categories": ["DE", "FR", "US", "BR"], "reference": [0.4, 0.3, 0.3, 0.0],
                       "current": [0.3, 0.2, 0.3, 0.2]}},
        {"column": "clicks", "kind": "numeric", "test": "psi", "statistic": 0.02, "threshold": 0.2,
         "drifted": False, "stats": {}, "notes": [],
         "histogram": {"edges": [0, 5, 10], "reference": [0.7, 0.3], "current": [0.69, 0.31]}},
        {"column": "session", "kind": "numeric", "test": "presence", "statistic": None, "threshold": None,
         "drifted": None, "stats": {}, "notes": ["only in the current data: nothing to compare it with"],
         "histogram": {}},
    ],
}

FIXED_AUDIT: list[dict[str, Any]] = [  # newest first, as audit_list sends them
    {"id": 4, "ts": "2024-05-01T10:12:31+00:00", "actor": "ana", "action": "job.retry", "target": "jc0ffee02",
     "detail": {"was": "failed", "attempt": 3}},
    {"id": 3, "ts": "2024-05-01T10:05:00+00:00", "actor": "ana", "action": "host.drain", "target": "local",
     "detail": {"reason": "disk swap"}},
    {"id": 2, "ts": "2024-05-01T10:02:00+00:00", "actor": "ana", "action": "job.submit", "target": "jc0ffee03",
     "detail": {"name": "sweep-lr-3", "project": "vision"}},
    {"id": 1, "ts": "2024-05-01T09:00:00+00:00", "actor": "bo", "action": "controller.start", "target": None,
     "detail": {}},
]


def _progress(pending: int, running: int, succeeded: int, failed: int = 0, cancelled: int = 0) -> dict[str, int]:
    counts = {"pending": pending, "running": running, "succeeded": succeeded, "failed": failed,
              "cancelled": cancelled, "lost": 0}
    return {**counts, "total": sum(counts.values())}


_BEST = {"run_id": "js0000004-1", "job_id": "js0000004", "name": "lr-grid-4", "state": "succeeded", "value": 0.1834,
         "idx": 4, "point": {"params.lr": 0.001, "params.opt": "adam"}, "metric": "val_loss", "mode": "min"}

FIXED_SWEEPS: list[dict[str, Any]] = [  # newest first, as sweeps_list sends them
    {"sweep_id": "s1a2b3c4", "name": "lr-grid", "project": "vision", "owner": "ana", "points": 6, "max_parallel": 2,
     "objective_metric": "val_loss", "objective_mode": "min", "created_at": "2024-05-01T10:00:00+00:00",
     "cancelled_by": None, "progress": _progress(1, 2, 2, failed=1), "best": _BEST},
    {"sweep_id": "s9f8e7d6", "name": "dropout", "project": "nlp", "owner": "bo", "points": 4, "max_parallel": None,
     "objective_metric": "acc", "objective_mode": "max", "created_at": "2024-04-30T09:00:00+00:00",
     "cancelled_by": "bo", "progress": _progress(0, 0, 1, cancelled=3), "best": None},
]

_LRS, _OPTS = (0.1, 0.01, 0.001), ("adam", "sgd")
_STATES = ("succeeded", "failed", "succeeded", "running", "succeeded", "pending")
_LOSSES = (0.412, None, 0.297, 0.351, 0.1834, None)

FIXED_SWEEP: dict[str, Any] = {  # sweep_show of lr-grid
    **{k: v for k, v in FIXED_SWEEPS[0].items()},
    "spec": {}, "spec_path": "/home/ana/lr-grid.yaml",
    "children": [{"idx": i, "job_id": f"js000000{i}", "name": f"lr-grid-{i}", "state": _STATES[i],
                  "run_id": f"js000000{i}-1" if _STATES[i] != "pending" else None,
                  "host": "gpu-box-1" if _STATES[i] != "pending" else None, "reason": None,
                  "point": {"params.lr": _LRS[i // 2], "params.opt": _OPTS[i % 2]}, "objective": _LOSSES[i]}
                 for i in range(6)],
}


# ------------------------------------------------------------------ deployments (deploy_list, deploy_show, history)
_T0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC


def _replica(rid: str, v: int, port: int, health: str, rps: float | None, p95: float | None, err: float | None,
             restarts: int = 0, draining: bool = False, host: str = "gpu-box-1", error: str = "") -> dict[str, Any]:
    return {"replica_id": rid, "version": v, "revision": v, "job_id": f"jd{port:05d}", "run_id": f"jd{port:05d}-1",
            "host": host, "port": port, "health": health, "restarts": restarts, "last_error": error,
            "draining": draining, "stopping": False, "created_at": _T0, "healthy_since": _T0 + 5,
            "rps": rps, "error_rate": err, "p95": p95}


FIXED_DEPLOYMENTS: list[dict[str, Any]] = [  # deploy_list
    {"name": "iris", "model": "iris@production", "phase": "rolling", "target_version": 2, "stable_version": 1,
     "replicas": 2, "healthy": 2, "progress": "1/2 v2 healthy, 1 v1 healthy, 1 v2 unhealthy",
     "reason": "alias production v1\u2192v2", "updated_at": _T0 + 60},
    {"name": "sentiment", "model": "sentiment:3", "phase": "stable", "target_version": 3, "stable_version": 2,
     "replicas": 1, "healthy": 1, "progress": "1/1 v3 healthy", "reason": None, "updated_at": _T0 + 30},
    {"name": "ranker", "model": "ranker@canary", "phase": "rolled_back", "target_version": 4, "stable_version": 5,
     "replicas": 1, "healthy": 0, "progress": "0/1 v4 starting",
     "reason": "v5 replica ranker-v5-2 not healthy in 2m", "updated_at": _T0 + 90},
]
FIXED_DEPLOY_SHOWS: dict[str, dict[str, Any]] = {  # deploy_show of each
    "iris": {"name": "iris", "model_ref": "iris@production", "phase": "rolling", "target_version": 2,
             "stable_version": 1, "reason": "alias production v1\u2192v2", "spec": {"replicas": 2},
             "target_revision": 2, "stable_revision": 1,
             "revisions": [{"revision": 1, "model_version": 1}, {"revision": 2, "model_version": 2}],
             "progress": "1/2 v2 healthy, 1 v1 healthy, 1 v2 unhealthy",
             "replicas": [_replica("iris-v1-1", 1, 41001, "healthy", 12.5, 0.0123, 0.0),
                          _replica("iris-v2-3", 2, 41003, "healthy", 11.0, 0.0181, 0.02, restarts=1),
                          _replica("iris-v2-4", 2, 41004, "unhealthy", None, None, None,
                                   error="deep probe POST /predict: status 500, expected 200")]},
    "sentiment": {"name": "sentiment", "model_ref": "sentiment:3", "phase": "stable", "target_version": 3,
                  "stable_version": 2, "reason": "apply: model v2\u2192v3", "spec": {"replicas": 1},
                  "progress": "1/1 v3 healthy",
                  "replicas": [_replica("sentiment-v3-1", 3, 42001, "healthy", 3.25, 0.250, 0.0, host="local")]},
    "ranker": {"name": "ranker", "model_ref": "ranker@canary", "phase": "rolled_back", "target_version": 4,
               "stable_version": 5, "reason": "v5 replica ranker-v5-2 not healthy in 2m", "spec": {"replicas": 1},
               "progress": "0/1 v4 starting",
               "replicas": [_replica("ranker-v4-3", 4, 43003, "starting", None, None, None)]},
}
FIXED_DEPLOY_HISTORY: list[dict[str, Any]] = [  # deploy_history iris, oldest first
    {"seq": 1, "deployment": "iris", "ts": _T0, "actor": "alice", "kind": "apply", "version": 1,
     "detail": {"change": "created"}},
    {"seq": 2, "deployment": "iris", "ts": _T0 + 1, "actor": "alice", "kind": "rollout", "version": 1,
     "detail": {"cause": "first apply of v1"}},
    {"seq": 3, "deployment": "iris", "ts": _T0 + 40, "actor": "bob", "kind": "rollout", "version": 2,
     "detail": {"cause": "alias production v1\u2192v2"}},
    {"seq": 4, "deployment": "iris", "ts": _T0 + 41, "actor": "controller", "kind": "start", "version": 2,
     "detail": {"replica_id": "iris-v2-3"}},
]
FIXED_DEPLOY_METRICS: dict[str, Any] = {  # deploy_metrics iris --since 1h
    "deployment": "iris", "since": _T0 - 3600, "until": _T0 + 60, "target_version": 2, "stable_version": 1,
    "versions": [{"version": 1, "replicas": 2, "requests": 41250, "errors": 12, "rps": 12.5, "error_rate": 0.00029,
                  "p50": 0.0061, "p95": 0.0123, "p99": 0.0311, "latency_mean": 0.007, "gauges": {}},
                 {"version": 2, "replicas": 2, "requests": 660, "errors": 13, "rps": 11.0, "error_rate": 0.0197,
                  "p50": 0.0094, "p95": 0.0181, "p99": 0.2403, "latency_mean": 0.012, "gauges": {}}],
}

# A Slurm cluster as hosts_list sends it: the login node's telemetry and sinfo's partitions (info.slurm).
FIXED_CLUSTER: dict[str, Any] = {
    "name": "hpc", "kind": "slurm", "state": "up", "message": "", "agent_version": "0.1.0",
    "last_seen": 1_700_000_000.0, "seen_ago": 0.4, "stale": False, "labels": {"backend": "slurm"},
    "running_jobs": 3, "simulated": False, "drained": None,
    "info": {"slurm": {"at": 1_700_000_000.0 - 7, "nodes": {"allocated": 3, "idle": 2, "down": 1, "total": 6},
                       "gpus": {"gpu": {"total": 24, "free": 5}},
                       "partitions": [
                           {"name": "cpu", "default": True, "up": True, "node_count": 2,
                            "nodes": {"allocated": 1, "idle": 1, "down": 0, "total": 2}, "gpus_per_node": {},
                            "cpus_per_node": 32, "memory_mb_per_node": 128000, "gpus": {}},
                           {"name": "gpu-a100", "default": False, "up": True, "node_count": 2,
                            "nodes": {"allocated": 1, "idle": 1, "down": 0, "total": 2}, "gpus_per_node": {"gpu": 4},
                            "cpus_per_node": 64, "memory_mb_per_node": 512000,
                            "gpus": {"gpu": {"total": 8, "free": 5, "free_max_node": 4}}},
                           {"name": "gpu-h100", "default": False, "up": True, "node_count": 2,
                            "nodes": {"allocated": 1, "idle": 0, "down": 1, "total": 2}, "gpus_per_node": {"gpu": 8},
                            "cpus_per_node": 96, "memory_mb_per_node": 1024000,
                            "gpus": {"gpu": {"total": 16, "free": 0, "free_max_node": 0}}}]}},
    "telemetry": _telemetry(4.0, 12.0, "no_driver", []),
    "history": {"cpu_percent": _history(60, 3, 4), "memory_percent": _history(60, 2, 1, step=1)},
}
