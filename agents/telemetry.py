"""Host and GPU telemetry: psutil for the host, NVML (nvidia-ml-py) for GPUs.

All NVML access sits in :class:`NvmlGpuSource`. Every NVML call goes
through :func:`_nv`, which turns an NVML error into ``None`` ("n/a") for
that one field, so one counter a driver refuses never breaks a sample. A
missing driver is one clear state (``gpu_state="no_driver"``), not a crash.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Protocol

import psutil

from mlfleet.core.base.models import GpuProcess, GpuSample, GpuState, HostSample


class GpuSource(Protocol):
    def read(self) -> tuple[GpuState, str, list[GpuSample]]: ...

    def close(self) -> None: ...


def _nv(fn: Callable[..., Any], *args: Any) -> Any:
    """Call one NVML function; any NVML error means "not available" for this field."""
    import pynvml

    try:
        return fn(*args)
    except pynvml.NVMLError:
        return None


def process_identity(pid: int) -> tuple[str | None, str | None]:
    """A GPU process's name, and the mlfleet run it belongs to (None: someone else's)."""
    try:
        proc = psutil.Process(pid)
        name = proc.name()
    except (psutil.Error, OSError):
        return None, None
    try:
        run_id = proc.environ().get("MLFLEET_RUN_ID")
    except (psutil.Error, OSError):  # another user's process: not ours to read, and not ours
        run_id = None
    return name, run_id


class NvmlGpuSource:
    """GPUs seen through NVML; a host without a driver reports ``no_driver``."""

    def __init__(self) -> None:
        self.state: GpuState = "no_driver"
        self.message = ""
        try:
            import pynvml
        except ImportError:  # pragma: no cover - nvidia-ml-py is a dependency
            self.message = "nvidia-ml-py is not installed"
            return
        self._nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            self.state, self.message = _classify_init_error(pynvml, exc)
            return
        self.state = "ok"
        driver = _nv(pynvml.nvmlSystemGetDriverVersion)
        self.message = f"driver {_text(driver)}" if driver else ""

    def read(self) -> tuple[GpuState, str, list[GpuSample]]:
        if self.state != "ok":
            return self.state, self.message, []
        nv = self._nvml
        count = _nv(nv.nvmlDeviceGetCount)
        if count is None:
            return "error", "NVML could not count the GPUs", []
        return "ok", self.message, [self._read_one(i) for i in range(count)]

    def _read_one(self, index: int) -> GpuSample:
        nv = self._nvml
        handle = _nv(nv.nvmlDeviceGetHandleByIndex, index)
        if handle is None:
            return GpuSample(index=index)
        memory = _nv(nv.nvmlDeviceGetMemoryInfo, handle)
        util = _nv(nv.nvmlDeviceGetUtilizationRates, handle)
        power = _nv(nv.nvmlDeviceGetPowerUsage, handle)
        limit = _nv(nv.nvmlDeviceGetEnforcedPowerLimit, handle)
        temp = _nv(nv.nvmlDeviceGetTemperature, handle, nv.NVML_TEMPERATURE_GPU)
        ecc = _nv(nv.nvmlDeviceGetTotalEccErrors, handle, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC)
        reasons_fn = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            getattr(nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
        reasons = _nv(reasons_fn, handle) if reasons_fn else None
        processes: dict[int, GpuProcess] = {}
        for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            fn = getattr(nv, getter, None)
            for proc in (_nv(fn, handle) if fn else None) or []:
                used = getattr(proc, "usedGpuMemory", None)
                processes.setdefault(proc.pid, GpuProcess(pid=proc.pid, used_memory=used if isinstance(used, int) else None))
        for proc in processes.values():
            proc.name, proc.run_id = process_identity(proc.pid)
        return GpuSample(
            index=index,
            uuid=_text(_nv(nv.nvmlDeviceGetUUID, handle)),
            name=_text(_nv(nv.nvmlDeviceGetName, handle)),
            utilization=float(util.gpu) if util is not None else None,
            memory_total=int(memory.total) if memory is not None else None,
            memory_used=int(memory.used) if memory is not None else None,
            memory_free=int(memory.free) if memory is not None else None,
            temperature=float(temp) if temp is not None else None,
            power_draw=power / 1000.0 if power is not None else None,
            power_limit=limit / 1000.0 if limit is not None else None,
            ecc_errors=int(ecc) if ecc is not None else None,
            throttle_reasons=_throttle_names(nv, reasons) if reasons is not None else [],
            processes=list(processes.values()),
        )

    @property
    def links(self) -> list[list[int]] | None:
        """Pairwise link levels, read once (topology does not change while the driver runs)."""
        if self.state != "ok":
            return None
        if not hasattr(self, "_links"):
            self._links = _read_links(self._nvml)
        return self._links

    def close(self) -> None:
        if self.state == "ok":
            _nv(self._nvml.nvmlShutdown)


# Clock-event bits that mean the GPU is held back (idle and app-clock settings are not problems).
_THROTTLE_BITS = {
    "nvmlClocksThrottleReasonSwPowerCap": "sw_power_cap",
    "nvmlClocksThrottleReasonHwSlowdown": "hw_slowdown",
    "nvmlClocksThrottleReasonSwThermalSlowdown": "sw_thermal",
    "nvmlClocksThrottleReasonHwThermalSlowdown": "hw_thermal",
    "nvmlClocksThrottleReasonHwPowerBrakeSlowdown": "hw_power_brake",
}


def _throttle_names(nv: Any, mask: int) -> list[str]:
    return [name for attr, name in _THROTTLE_BITS.items() if getattr(nv, attr, 0) and mask & getattr(nv, attr)]


def _read_links(nv: Any) -> list[list[int]] | None:
    count = _nv(nv.nvmlDeviceGetCount)
    if not count:
        return None
    handles = [_nv(nv.nvmlDeviceGetHandleByIndex, i) for i in range(count)]
    if any(h is None for h in handles):
        return None
    nvlink_index = getattr(nv, "NVML_P2P_CAPS_INDEX_NVLINK", None)
    links = [[0] * count for _ in range(count)]
    for a in range(count):
        for b in range(a + 1, count):
            level = None
            if nvlink_index is not None and _nv(nv.nvmlDeviceGetP2PStatus, handles[a], handles[b], nvlink_index) == \
                    getattr(nv, "NVML_P2P_STATUS_OK", 0):
                level = 0
            if level is None:
                level = _nv(nv.nvmlDeviceGetTopologyCommonAncestor, handles[a], handles[b])
            if level is None:
                return None  # partial topology is worse than none
            links[a][b] = links[b][a] = int(level)
    return links


def _classify_init_error(nv: Any, exc: Exception) -> tuple[GpuState, str]:
    lib_missing = getattr(nv, "NVML_ERROR_LIBRARY_NOT_FOUND", None)
    driver_missing = getattr(nv, "NVML_ERROR_DRIVER_NOT_LOADED", None)
    code = getattr(exc, "value", None)
    if code in (lib_missing, driver_missing):
        return "no_driver", "no NVIDIA driver on this host"
    return "error", f"NVML failed to start: {exc} (driver/library mismatch?)"


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class HostSampler:
    """Takes numbered host samples; rates (CPU, network) are since the last sample."""

    def __init__(self, disk_path: Path, gpus: GpuSource) -> None:
        self.disk_path = disk_path
        self.gpus = gpus
        self.seq = 0
        psutil.cpu_percent(interval=None)  # prime the CPU counter
        self._last_net = psutil.net_io_counters()
        self._last_ts = time.time()

    def sample(self) -> HostSample:
        now = time.time()
        elapsed = max(now - self._last_ts, 1e-3)
        net = psutil.net_io_counters()
        rx = (net.bytes_recv - self._last_net.bytes_recv) / elapsed if net and self._last_net else 0.0
        tx = (net.bytes_sent - self._last_net.bytes_sent) / elapsed if net and self._last_net else 0.0
        self._last_net, self._last_ts = net, now
        memory = psutil.virtual_memory()
        try:
            disk = psutil.disk_usage(str(self.disk_path))
            disk_total, disk_used = disk.total, disk.used
        except OSError:
            disk_total = disk_used = 0
        try:
            load1 = psutil.getloadavg()[0]
        except (AttributeError, OSError):
            load1 = 0.0
        gpu_state, gpu_message, gpus = self.gpus.read()
        links = getattr(self.gpus, "links", None) if gpu_state == "ok" else None
        self.seq += 1
        return HostSample(
            seq=self.seq,
            ts=now,
            cpu_percent=psutil.cpu_percent(interval=None),
            cpu_count=psutil.cpu_count() or 1,
            load1=load1,
            memory_total=memory.total,
            memory_used=memory.total - memory.available,
            swap_used=psutil.swap_memory().used,
            disk_total=disk_total,
            disk_used=disk_used,
            net_rx_bps=max(rx, 0.0),
            net_tx_bps=max(tx, 0.0),
            gpu_state=gpu_state,
            gpu_message=gpu_message,
            gpus=gpus,
            gpu_links=links,
        )
