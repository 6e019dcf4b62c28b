"""What the agent sees of a host and its GPUs: real psutil, NVML faked only at the pynvml calls, simulated GPUs live.

This machine has no NVIDIA driver, so the NVML stories stand a fake GPU box
behind the ``pynvml`` functions themselves (the library boundary) and let
the real ``NvmlGpuSource`` map it. Everything else is real: psutil, the
processes NVML names, and an agent process serving simulated GPUs that a
user rewrites while it runs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import psutil
import pynvml
import pytest

from mlfleet.agents.simulated import SimulatedGpuSource
from mlfleet.agents.telemetry import HostSampler, NvmlGpuSource
from mlfleet.core.base.models import GpuProcess, GpuSample
from mlfleet.core.base.protocol import Peer, open_unix_peer

GiB = 1024**3
H100 = "NVIDIA H100 80GB HBM3"
# A pid NVML may report from another container's pid namespace: no process here has it.
UNSEEN_PID = 4_194_305  # above PID_MAX_LIMIT, so it can never exist on this host

# ------------------------------------------------------------------ a fake GPU box behind pynvml


@dataclass
class FakeGpu:
    """One GPU as the NVML library would answer for it; an NVMLError value means "the driver refuses"."""

    uuid: bytes | str
    name: bytes | str
    total: int = 80 * GiB
    used: int = 0
    utilization: int = 0
    power_mw: int | pynvml.NVMLError = 70_000
    limit_mw: int = 700_000
    temperature: int = 34
    ecc: int = 0
    reasons: int = 0
    processes: list[tuple[int, int | None]] = field(default_factory=list)  # (pid, usedGpuMemory)
    lost: bool = False


def _refuse(code: int) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        raise pynvml.NVMLError(code)

    return call


def install_fake_nvml(monkeypatch: pytest.MonkeyPatch, gpus: list[FakeGpu], *, driver: bytes = b"550.54.15") -> None:
    """Patch the pynvml calls (and only those) so that NVML reports ``gpus``."""

    def handle(index: int) -> tuple[str, int]:
        if not 0 <= index < len(gpus):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if gpus[index].lost:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return ("fake-handle", index)

    def gpu(h: tuple[str, int]) -> FakeGpu:
        assert h[0] == "fake-handle", f"NVML got {h!r} where a device handle belongs"
        return gpus[h[1]]

    def answer(value: Any) -> Any:
        if isinstance(value, pynvml.NVMLError):
            raise value
        return value

    def temperature(h: tuple[str, int], sensor: int) -> int:
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu(h).temperature

    def ecc(h: tuple[str, int], error_type: int, counter: int) -> int:
        if (error_type, counter) != (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC):
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gpu(h).ecc

    def memory(h: tuple[str, int]) -> pynvml.c_nvmlMemory_t:
        g = gpu(h)
        return pynvml.c_nvmlMemory_t(total=g.total, used=g.used, free=g.total - g.used)

    def processes(h: tuple[str, int]) -> list[Any]:
        return [pynvml.nvmlFriendlyObject({"pid": pid, "usedGpuMemory": used}) for pid, used in gpu(h).processes]

    patches: dict[str, Callable[..., Any]] = {
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlSystemGetDriverVersion": lambda: driver,
        "nvmlDeviceGetCount": lambda: len(gpus),
        "nvmlDeviceGetHandleByIndex": handle,
        "nvmlDeviceGetUUID": lambda h: gpu(h).uuid,
        "nvmlDeviceGetName": lambda h: gpu(h).name,
        "nvmlDeviceGetMemoryInfo": memory,
        "nvmlDeviceGetUtilizationRates": lambda h: pynvml.c_nvmlUtilization_t(gpu=gpu(h).utilization, memory=0),
        "nvmlDeviceGetPowerUsage": lambda h: answer(gpu(h).power_mw),
        "nvmlDeviceGetEnforcedPowerLimit": lambda h: gpu(h).limit_mw,
        "nvmlDeviceGetTemperature": temperature,
        "nvmlDeviceGetTotalEccErrors": ecc,
        "nvmlDeviceGetCurrentClocksEventReasons": lambda h: gpu(h).reasons,
        "nvmlDeviceGetCurrentClocksThrottleReasons": lambda h: gpu(h).reasons,
        "nvmlDeviceGetComputeRunningProcesses": processes,
        # A compute-only data-center GPU has no graphics contexts to list.
        "nvmlDeviceGetGraphicsRunningProcesses": _refuse(pynvml.NVML_ERROR_NOT_SUPPORTED),
    }
    for name, fake in patches.items():
        monkeypatch.setattr(pynvml, name, fake)


@pytest.fixture
def training_process():
    """A real process of an mlfleet run (it carries MLFLEET_RUN_ID), as a job would."""
    proc = subprocess.Popen(["sleep", "60"], env={**os.environ, "MLFLEET_RUN_ID": "r-telemetry-1"})
    yield proc
    proc.terminate()
    proc.wait(10)


# ------------------------------------------------------------------ NVML, mapped field by field


def test_a_two_gpu_box_is_reported_field_by_field_in_watts_with_names_decoded(monkeypatch, training_process) -> None:
    notebook_pid = os.getpid()  # someone else's process on the GPU: here, this very test
    install_fake_nvml(monkeypatch, [
        FakeGpu(uuid=b"GPU-6a1f0c2e-aaaa-bbbb-cccc-000000000000", name=b"NVIDIA H100 80GB HBM3",
                used=61 * GiB, utilization=97, power_mw=612_345, limit_mw=700_000, temperature=83, ecc=2,
                reasons=pynvml.nvmlClocksThrottleReasonSwPowerCap | pynvml.nvmlClocksThrottleReasonHwThermalSlowdown
                | pynvml.nvmlClocksThrottleReasonGpuIdle,
                processes=[(training_process.pid, 40 * GiB), (notebook_pid, 20 * GiB), (UNSEEN_PID, GiB)]),
        FakeGpu(uuid="GPU-6a1f0c2e-aaaa-bbbb-cccc-000000000001", name="NVIDIA A100-SXM4-40GB",
                total=40 * GiB, used=512 * 1024**2, utilization=0, power_mw=55_000, limit_mw=400_000,
                temperature=31),
    ])
    source = NvmlGpuSource()
    state, message, gpus = source.read()

    assert (state, message) == ("ok", "driver 550.54.15")
    assert gpus == [
        GpuSample(index=0, uuid="GPU-6a1f0c2e-aaaa-bbbb-cccc-000000000000", name="NVIDIA H100 80GB HBM3",
                  utilization=97.0, memory_total=80 * GiB, memory_used=61 * GiB, memory_free=19 * GiB,
                  temperature=83.0, power_draw=612.345, power_limit=700.0, ecc_errors=2,
                  throttle_reasons=["sw_power_cap", "hw_thermal"],  # an idle GPU is not held back
                  processes=[
                      GpuProcess(pid=training_process.pid, used_memory=40 * GiB, name="sleep",
                                 run_id="r-telemetry-1"),
                      GpuProcess(pid=notebook_pid, used_memory=20 * GiB, name=psutil.Process().name(),
                                 run_id=None),
                      GpuProcess(pid=UNSEEN_PID, used_memory=GiB, name=None, run_id=None),
                  ]),
        GpuSample(index=1, uuid="GPU-6a1f0c2e-aaaa-bbbb-cccc-000000000001", name="NVIDIA A100-SXM4-40GB",
                  utilization=0.0, memory_total=40 * GiB, memory_used=512 * 1024**2,
                  memory_free=40 * GiB - 512 * 1024**2, temperature=31.0, power_draw=55.0, power_limit=400.0,
                  ecc_errors=0, throttle_reasons=[], processes=[]),
    ]
    source.close()


def test_a_power_counter_the_driver_refuses_is_n_a_and_nothing_else_is_lost(monkeypatch) -> None:
    install_fake_nvml(monkeypatch, [
        FakeGpu(uuid=b"GPU-0", name=b"NVIDIA H100 80GB HBM3", used=10 * GiB, utilization=50, temperature=60,
                power_mw=pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED), limit_mw=700_000, ecc=0,
                reasons=pynvml.nvmlClocksThrottleReasonHwSlowdown, processes=[(UNSEEN_PID, 3 * GiB)]),
    ])
    state, _, [gpu] = NvmlGpuSource().read()

    assert state == "ok"
    assert gpu.power_draw is None
    assert gpu == GpuSample(index=0, uuid="GPU-0", name="NVIDIA H100 80GB HBM3", utilization=50.0,
                            memory_total=80 * GiB, memory_used=10 * GiB, memory_free=70 * GiB, temperature=60.0,
                            power_draw=None, power_limit=700.0, ecc_errors=0, throttle_reasons=["hw_slowdown"],
                            processes=[GpuProcess(pid=UNSEEN_PID, used_memory=3 * GiB)])


def test_a_process_whose_memory_nvml_cannot_tell_keeps_n_a_not_zero(monkeypatch) -> None:
    # Under MIG or without permission, NVML reports NVML_VALUE_NOT_AVAILABLE; pynvml turns it into None.
    install_fake_nvml(monkeypatch, [FakeGpu(uuid="GPU-0", name="NVIDIA A100-SXM4-80GB",
                                            processes=[(UNSEEN_PID, None), (UNSEEN_PID + 1, 0)])])
    _, _, [gpu] = NvmlGpuSource().read()

    assert [(p.pid, p.used_memory) for p in gpu.processes] == [(UNSEEN_PID, None), (UNSEEN_PID + 1, 0)]


def test_a_gpu_that_fell_off_the_bus_is_listed_with_every_field_n_a(monkeypatch) -> None:
    install_fake_nvml(monkeypatch, [FakeGpu(uuid="GPU-0", name="NVIDIA H100 80GB HBM3", lost=True),
                                    FakeGpu(uuid="GPU-1", name="NVIDIA H100 80GB HBM3", utilization=12)])
    state, _, gpus = NvmlGpuSource().read()

    assert state == "ok"
    assert gpus[0] == GpuSample(index=0)
    assert (gpus[1].index, gpus[1].uuid, gpus[1].utilization) == (1, "GPU-1", 12.0)


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED],
                         ids=["no-libnvidia-ml", "driver-not-loaded"])
def test_a_host_without_a_driver_says_so_in_one_sentence(monkeypatch, code: int) -> None:
    monkeypatch.setattr(pynvml, "nvmlInit", _refuse(code))
    source = NvmlGpuSource()

    assert source.read() == ("no_driver", "no NVIDIA driver on this host", [])
    source.close()


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH, pynvml.NVML_ERROR_UNKNOWN],
                         ids=["driver-library-mismatch", "unknown"])
def test_a_driver_that_fails_to_start_is_an_error_that_says_why(monkeypatch, code: int) -> None:
    monkeypatch.setattr(pynvml, "nvmlInit", _refuse(code))
    state, message, gpus = NvmlGpuSource().read()

    assert (state, gpus) == ("error", [])
    assert str(pynvml.NVMLError(code)) in message and "NVML" in message


def test_a_driver_that_cannot_count_its_gpus_is_an_error_sample_not_a_crash(monkeypatch, tmp_path: Path) -> None:
    install_fake_nvml(monkeypatch, [FakeGpu(uuid="GPU-0", name="NVIDIA H100 80GB HBM3")])
    monkeypatch.setattr(pynvml, "nvmlDeviceGetCount", _refuse(pynvml.NVML_ERROR_UNKNOWN))
    source = NvmlGpuSource()

    state, message, gpus = source.read()
    assert (state, gpus) == ("error", []) and message

    sample = HostSampler(tmp_path, source).sample()  # the host part of the sample is still there
    assert (sample.gpu_state, sample.gpus) == ("error", []) and sample.memory_total > 0


def test_this_machine_reports_what_its_real_nvml_finds() -> None:
    """No patching: the CI machine has no NVIDIA driver; a machine with one lists its GPUs."""
    source = NvmlGpuSource()
    state, message, gpus = source.read()
    try:
        if state == "ok":  # a driver is present after all
            assert message.startswith("driver ") and gpus
            assert [g.index for g in gpus] == list(range(len(gpus)))
            assert all(g.uuid and g.uuid.startswith(("GPU-", "MIG-")) and g.memory_total for g in gpus)
        else:
            assert (state, message, gpus) == ("no_driver", "no NVIDIA driver on this host", [])
    finally:
        source.close()


# ------------------------------------------------------------------ the host sampler, real psutil


def test_the_host_sampler_numbers_its_samples_and_reads_the_real_host(tmp_path: Path) -> None:
    described = tmp_path / "gpus.yaml"
    described.write_text(f"gpus:\n  - {{name: {H100}, count: 2, utilization: 40,"
                         " processes: [{pid: 4121, used_memory: 20GiB, name: jupyter}]}\n")
    sampler = HostSampler(tmp_path, SimulatedGpuSource(described))

    first = sampler.sample()
    time.sleep(0.05)
    second = sampler.sample()

    assert (first.seq, second.seq) == (1, 2) and second.ts > first.ts
    for sample in (first, second):
        assert sample.memory_total > 0 and 0 < sample.memory_used <= sample.memory_total
        assert sample.cpu_count >= 1 and sample.cpu_percent >= 0 and sample.load1 >= 0
        assert sample.net_rx_bps >= 0 and sample.net_tx_bps >= 0
        assert sample.disk_total > 0 and 0 < sample.disk_used <= sample.disk_total
        assert sample.gpu_state == "ok" and sample.gpu_message.startswith("simulated")
    # count: 2 replicates the GPU, processes and all; indices and uuids follow
    assert [(g.index, g.uuid, g.name) for g in second.gpus] == [(0, "GPU-simulated-0000", H100),
                                                                (1, "GPU-simulated-0001", H100)]
    assert all(g.memory_used == 20 * GiB and g.memory_free == 60 * GiB for g in second.gpus)
    assert all(g.processes == [GpuProcess(pid=4121, used_memory=20 * GiB, name="jupyter")] for g in second.gpus)


def test_a_simulated_gpu_file_with_bytes_that_are_not_text_is_an_error_sample(tmp_path: Path) -> None:
    described = tmp_path / "gpus.yaml"
    described.write_bytes(b"\xff\xfe\x00\x81 not a YAML file")  # e.g. a file copied over with the wrong name

    state, message, gpus = SimulatedGpuSource(described).read()

    assert (state, gpus) == ("error", []) and str(described) in message


def test_a_simulated_process_that_holds_no_memory_yet_shows_zero_not_n_a(tmp_path: Path) -> None:
    described = tmp_path / "gpus.yaml"
    described.write_text("gpus:\n  - processes: [{pid: 4121, used_memory: 0, name: jupyter}]\n")

    _, _, [gpu] = SimulatedGpuSource(described).read()

    assert gpu.processes == [GpuProcess(pid=4121, used_memory=0, name="jupyter")]


# ------------------------------------------------------------------ simulated GPUs through a real agent

NOTEBOOK_BOX = f"""\
gpus:
  - name: {H100}           # GPU 0: free
    memory_total: 80GiB
    memory_used: 1GiB
  - name: {H100}           # GPU 1: someone's notebook holds 20 GiB of it
    memory_total: 80GiB
    memory_used: 1GiB
    utilization: 30
    processes: [{{pid: 4121, used_memory: 20GiB, name: jupyter}}]
"""

BUSY_BOX = f"""\
gpus:
  - name: {H100}
    memory_total: 80GiB
  - name: {H100}
    memory_total: 80GiB
    utilization: 91
    processes: [{{pid: 5150, used_memory: 30GiB, name: vllm}}]
"""

IDLE_PAIR = f"""\
gpus:
  - {{name: {H100}, count: 2, memory_total: 80GiB}}
"""


@dataclass
class Agent:
    proc: subprocess.Popen
    socket: Path
    gpus_file: Path
    log: Path


@pytest.fixture
def simulated_agent():
    root = Path(tempfile.mkdtemp(prefix="mlf", dir="/tmp"))  # short: a Unix socket path must fit in ~100 chars
    gpus_file = root / "gpus.yaml"
    gpus_file.write_text(NOTEBOOK_BOX)
    sock, log = root / "a.sock", root / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlfleet", "agent", "serve", "--state-dir", str(root / "state"),
                                 "--socket", str(sock), "--simulate-gpus", str(gpus_file), "--sample-interval", "0.2"],
                                env={**os.environ, "MLFLEET_HOME": str(root)}, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield Agent(proc, sock, gpus_file, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(root, ignore_errors=True)


async def _connect(agent: Agent, timeout: float = 30.0) -> Peer:
    deadline = time.monotonic() + timeout
    while not agent.socket.exists():
        assert agent.proc.poll() is None, f"the agent exited: {agent.log.read_text()}"
        assert time.monotonic() < deadline, f"no agent socket after {timeout:.0f} s: {agent.log.read_text()}"
        await asyncio.sleep(0.1)
    peer = await open_unix_peer(str(agent.socket), "agent")
    await peer.hello("test")
    return peer


async def _next_sample(peer: Peer, after: int, what: str, check: Callable[[dict], bool],
                       timeout: float = 20.0) -> dict[str, Any]:
    """The first sample newer than seq ``after`` for which ``check`` holds."""
    deadline, seen, last = time.monotonic() + timeout, after, None
    while time.monotonic() < deadline:
        for sample in await peer.request("telemetry", since=seen):
            seen, last = max(seen, sample["seq"]), sample
            if sample["seq"] > after and check(sample):
                return sample
        await asyncio.sleep(0.1)
    raise AssertionError(f"no sample showed {what} within {timeout:.0f} s; the last one: {last}")


def _pids(gpu: dict[str, Any]) -> list[int]:
    return [p["pid"] for p in gpu["processes"]]


async def test_simulated_gpus_follow_their_file_live_through_a_real_agent(simulated_agent: Agent) -> None:
    agent = simulated_agent
    peer = await _connect(agent)
    try:
        # The box as described: two H100s, someone's notebook holding 20 GiB of the second.
        first = await _next_sample(peer, 0, "two GPUs", lambda s: len(s["gpus"]) == 2)
        assert first["gpu_state"] == "ok" and first["gpu_message"].startswith("simulated")
        gpu0, gpu1 = first["gpus"]
        assert (gpu0["uuid"], gpu1["uuid"]) == ("GPU-simulated-0000", "GPU-simulated-0001")
        assert gpu0["name"] == gpu1["name"] == H100
        assert (gpu0["memory_used"], gpu0["processes"]) == (1 * GiB, [])
        assert (gpu1["memory_used"], gpu1["memory_free"]) == (21 * GiB, 59 * GiB)
        assert gpu1["processes"] == [{"pid": 4121, "used_memory": 20 * GiB, "name": "jupyter", "run_id": None}]
        info = await peer.request("info")
        assert info["simulated_gpus"] is True

        # The user rewrites the file: a vLLM server takes GPU 1 at 91 %.
        agent.gpus_file.write_text(BUSY_BOX)
        busy = await _next_sample(peer, first["seq"], "the vLLM server on GPU 1",
                                  lambda s: len(s["gpus"]) == 2 and _pids(s["gpus"][1]) == [5150])
        assert busy["gpus"][1]["utilization"] == 91
        assert busy["gpus"][1]["memory_used"] == 30 * GiB and busy["gpus"][0]["processes"] == []

        # A broken file is an error sample naming the file; the agent keeps serving.
        agent.gpus_file.write_text("gpus: [{name: H100, memory_total: 80GiB\n  : : not yaml ]\n")
        broken = await _next_sample(peer, busy["seq"], "an error", lambda s: s["gpu_state"] == "error")
        assert str(agent.gpus_file) in broken["gpu_message"] and broken["gpus"] == []
        assert broken["memory_total"] > 0  # the host part of the sample is unaffected
        assert agent.proc.poll() is None and (await peer.request("info"))["simulated_gpus"] is True

        # Fixed again (now as count: 2), it recovers on its own.
        agent.gpus_file.write_text(IDLE_PAIR)
        fixed = await _next_sample(peer, broken["seq"], "the recovered GPUs",
                                   lambda s: s["gpu_state"] == "ok" and len(s["gpus"]) == 2)
        assert [g["uuid"] for g in fixed["gpus"]] == ["GPU-simulated-0000", "GPU-simulated-0001"]
        assert all(g["processes"] == [] and g["memory_used"] == 0 for g in fixed["gpus"])
    finally:
        await peer.close()
    assert agent.proc.poll() is None


def test_simulated_nvlink_groups_become_a_link_matrix(tmp_path) -> None:
    from mlfleet.agents.simulated import SimulatedGpuSource

    path = tmp_path / "gpus.yaml"
    path.write_text("gpus:\n  - {name: NVIDIA H100 80GB HBM3, count: 4}\nnvlink_groups: [[0, 1], [2, 3]]\n")
    source = SimulatedGpuSource(path)
    state, _, gpus = source.read()
    assert state == "ok" and len(gpus) == 4
    assert source.links == [[0, 0, 50, 50], [0, 0, 50, 50], [50, 50, 0, 0], [50, 50, 0, 0]]
