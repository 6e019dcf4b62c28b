"""Hosts kept sorted by what they have left, so that best fit looks only at hosts big enough."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator

from mlfleet.core.jobs.scheduling.capacity import HostCapacity
from mlfleet.core.jobs.scheduling.views import Policy, QueuedJob

class BestFitIndex:
    """Hosts kept sorted by what they have left, so a job looks only at hosts big enough for it.

    Orders: whole free GPUs (for whole-GPU jobs); free CPUs (for jobs without
    GPUs); and for jobs that share GPUs by memory, one order per GPU count n
    on the n-th largest free memory (so a job starts at the tightest host with
    n roomy GPUs). Each is built the first time a job needs it, so a cycle
    keeps up to date only the orders its queue uses; a placement then moves
    the host in each of them.
    """

    def __init__(self, caps: list[HostCapacity]) -> None:
        self.caps = caps  # by name: ties in every order go to the first name
        self.position = {cap.view.name: position for position, cap in enumerate(caps)}
        self.width = max((len(c.gpus) for c in caps), default=0)
        self.whole: _Order | None = None
        self.cpus: _Order | None = None
        self.memory: dict[int, _Order] = {}  # by GPU count n

    def walk(self, job: QueuedJob, policy: Policy) -> Iterator[HostCapacity]:
        """Hosts that may hold the job, tightest first."""
        if job.gpus and job.gpus > self.width:
            return iter(())
        if not job.gpus:
            if self.cpus is None:
                self.cpus = _Order(self.caps, [cap.cpus for cap in self.caps], whole_numbers=False)  # fractions
            return self.cpus.from_least(job.cpus)
        if job.gpu_memory is None:
            if self.whole is None:
                self.whole = _Order(self.caps, [cap.whole_gpus for cap in self.caps], whole_numbers=True)
            return self.whole.from_least(job.gpus)
        order = self.memory.get(job.gpus)
        if order is None:
            order = self.memory[job.gpus] = _Order(self.caps, [cap.nth_free(job.gpus) for cap in self.caps],
                                                   whole_numbers=True)
        return order.from_least(job.gpu_memory + policy.memory_margin)

    def measure(self, job: QueuedJob, cap: HostCapacity) -> float:
        """What :meth:`walk` orders ``cap`` by for ``job``: hosts that measure alike are best-fit ties."""
        if not job.gpus:
            return cap.cpus
        return cap.whole_gpus if job.gpu_memory is None else cap.nth_free(job.gpus)

    def moved(self, cap: HostCapacity) -> None:
        """The host's capacity changed: move it in every order there is."""
        position = self.position[cap.view.name]
        if self.whole is not None:
            self.whole.move(position, cap.whole_gpus)
        if self.cpus is not None:
            self.cpus.move(position, cap.cpus)
        for n, order in self.memory.items():
            order.move(position, cap.nth_free(n))


class _Order:
    """Hosts sorted by one measure of what they have left, then by name; and each host's measure.

    A key is ``measure * hosts + position by name`` when the measure is a
    whole number: one int compares several times faster than a tuple, and a
    cycle moves hosts thousands of times. Otherwise it is the tuple
    ``(measure, position)``.
    """

    def __init__(self, caps: list[HostCapacity], values: list[float], whole_numbers: bool) -> None:
        self.caps = caps
        self.scale = len(caps) if whole_numbers else 0
        self.values = values  # each host's measure, by position
        self.keys = sorted(self._key(value, position) for position, value in enumerate(values))

    def _key(self, value: float, position: int) -> object:
        return value * self.scale + position if self.scale else (value, position)

    def from_least(self, least: float) -> Iterator[HostCapacity]:
        """Hosts whose measure is at least ``least``, smallest first."""
        keys, caps, scale = self.keys, self.caps, self.scale
        if scale:
            whole = least if isinstance(least, int) else math.ceil(least)  # ceil() of an int costs a method lookup
            start = bisect.bisect_left(keys, whole * scale)
        else:
            start = bisect.bisect_left(keys, (least,))
        for n in range(start, len(keys)):
            yield caps[keys[n] % scale if scale else keys[n][1]]

    def move(self, position: int, value: float) -> None:
        """The host at ``position`` (by name) now measures ``value``."""
        old = self.values[position]
        if value != old:
            del self.keys[bisect.bisect_left(self.keys, self._key(old, position))]
            bisect.insort(self.keys, self._key(value, position))
            self.values[position] = value
