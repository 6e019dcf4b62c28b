"""Where on a Slurm cluster a job goes: its partition and ``--gres``, from the host's defaults and the job (pure).

A cluster whose GRES names GPU types gets ``--gres=gpu:TYPE:N`` for a job
naming one type. One whose GRES has no types (``gpu:4`` on every node)
tells the types apart by partition: hosts.yaml's ``slurm.gpu_partitions``
(``{a100: gpu-a100}``) sends a job naming a100 to ``gpu-a100`` with
``--gres=gpu:N``; a job accepting several mapped types gets all their
partitions (``--partition=gpu-a100,gpu-h100``: Slurm starts it in the first
that can). :func:`slurm_view` (core/jobs/dispatch.py) offers the mapped
types' GPUs, so the scheduler places such a job at all.
"""

from __future__ import annotations

from typing import Any

from mlfleet.core.fleet import slurm_cluster
from mlfleet.core.jobs.scheduling.capacity import type_matches


def mapped_partitions(gpu_partitions: dict[str, str], gpu_types: tuple[str, ...] | list[str]) -> list[str] | None:
    """The partitions of the job's GPU types when the map knows every one of them (None otherwise)."""
    if not gpu_types or not gpu_partitions:
        return None
    found: list[str] = []
    for wanted in gpu_types:
        part = next((p for key, p in gpu_partitions.items() if type_matches((wanted,), key)), None)
        if part is None:
            return None
        if part not in found:
            found.append(part)
    return found


def partition_and_gres(defaults: Any, gpus: int, gpu_types: tuple[str, ...] | list[str]
                       ) -> tuple[str | None, str | None]:
    """sbatch's ``--partition`` (None: the host's default, or Slurm's) and ``--gres`` (None: no GPUs).

    ``defaults`` is the host's ``slurm:`` block (its ``partition`` and ``gpu_partitions``).
    """
    if not gpus:
        return defaults.partition, None
    mapped = mapped_partitions(defaults.gpu_partitions, gpu_types)
    if mapped:
        return ",".join(mapped), f"gpu:{gpus}"
    gpu_type = gpu_types[0] if len(gpu_types) == 1 else None
    return defaults.partition, f"gpu:{gpu_type}:{gpus}" if gpu_type else f"gpu:{gpus}"


def free_gpus_words(defaults: Any, shape: dict[str, Any] | None, gpus: int,
                    gpu_types: tuple[str, ...] | list[str]) -> str:
    """``partition debug has 0 of 2 GPUs free (fake: 0/2)`` for each partition the job was sent to ("" unknown)."""
    if not isinstance(shape, dict):
        return ""
    chosen, _ = partition_and_gres(defaults, gpus, gpu_types)
    names: list[str | None] = list(chosen.split(",")) if chosen else [None]  # None: the cluster's default partition
    sentences = []
    for name in names:
        part = slurm_cluster.partition(shape, name)
        sentences.append(slurm_cluster.free_gpus_sentence(part) if part is not None
                         else f"sinfo shows no partition {name}" if name else "")
    return "; ".join(s for s in sentences if s)
