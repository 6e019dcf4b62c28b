"""Simulated GPUs for laptops, demos and tests: ``mlfleet agent serve --simulate-gpus FILE``.

The file is re-read at every sample, so a test (or a demo) changes the
telemetry live by rewriting it::

    gpus:
      - name: NVIDIA H100 80GB HBM3
        count: 4                  # four identical GPUs (indices follow the list order)
        memory_total: 80GiB
        memory_used: 0            # use by others, as NVML would report it
        utilization: 0            # percent
        temperature: 34
        power_draw: 70
        power_limit: 700
        processes:                # foreign processes holding the GPU
          - {pid: 4121, used_memory: 20GiB, name: jupyter}

A host with simulated GPUs says so (``gpu_message`` starts with
"simulated"), and the controller labels it as such everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
import yaml
from msgspec import Meta

from mlfleet.core.base.models import ByteSize, GpuProcess, GpuSample, GpuState, spec_dec_hook


class _Process(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pid: int
    used_memory: ByteSize | None = None
    name: str | None = None


class _Gpu(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str = "Simulated GPU"
    count: Annotated[int, Meta(ge=1, le=64)] = 1
    memory_total: ByteSize = ByteSize(80 * 1024**3)
    memory_used: ByteSize = ByteSize(0)
    utilization: Annotated[float, Meta(ge=0, le=100)] = 0.0
    temperature: float | None = 35.0
    power_draw: float | None = 60.0
    power_limit: float | None = 700.0
    ecc_errors: int | None = 0
    throttle_reasons: list[str] = msgspec.field(default_factory=list)
    processes: list[_Process] = msgspec.field(default_factory=list)


class _File(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    gpus: list[_Gpu] = msgspec.field(default_factory=list)
    nvlink_groups: list[list[int]] = msgspec.field(default_factory=list)  # GPUs linked by NVLink, by index


SIMULATED = "simulated GPUs"


class SimulatedGpuSource:
    simulated = True

    def __init__(self, path: Path) -> None:
        self.path = path

    links: list[list[int]] | None = None  # set by read(): from nvlink_groups (0 inside a group, 50 across)

    def read(self) -> tuple[GpuState, str, list[GpuSample]]:
        try:
            raw = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
            described = msgspec.convert(raw, _File, dec_hook=spec_dec_hook, str_keys=True)
        except (OSError, ValueError, yaml.YAMLError, msgspec.ValidationError) as exc:  # ValueError: not UTF-8
            reason = " ".join(str(exc).split())
            return "error", f"{SIMULATED}: cannot read {self.path}: {reason}", []
        samples: list[GpuSample] = []
        for gpu in described.gpus:
            for _ in range(gpu.count):
                index = len(samples)
                used = min(int(gpu.memory_used) + sum(int(p.used_memory or 0) for p in gpu.processes),
                           int(gpu.memory_total))
                samples.append(GpuSample(
                    index=index,
                    uuid=f"GPU-simulated-{index:04d}",
                    name=gpu.name,
                    utilization=gpu.utilization,
                    memory_total=int(gpu.memory_total),
                    memory_used=used,
                    memory_free=int(gpu.memory_total) - used,
                    temperature=gpu.temperature,
                    power_draw=gpu.power_draw,
                    power_limit=gpu.power_limit,
                    ecc_errors=gpu.ecc_errors,
                    throttle_reasons=list(gpu.throttle_reasons),
                    processes=[GpuProcess(pid=p.pid, used_memory=int(p.used_memory) if p.used_memory is not None else None,
                                          name=p.name) for p in gpu.processes],
                ))
        self.links = None
        if described.nvlink_groups:
            group = {i: n for n, members in enumerate(described.nvlink_groups) for i in members}
            self.links = [[0 if a == b or (a in group and group.get(a) == group.get(b)) else 50
                           for b in range(len(samples))] for a in range(len(samples))]
        return "ok", f"{SIMULATED} from {self.path}", samples

    def close(self) -> None:
        pass
