"""Starts, watches and cancels runs on this node, through their run folders.

The state of a run is read from its folder (see rundir.py), never kept only
in memory: an agent that restarts knows every run it had, re-attaches to
the ones still going and reports the exits it missed. Process identity is
pid *plus* process start time, so a reused pid is never mistaken for a run.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import msgspec
import psutil

from mlfleet.core.base.errors import MlfleetError, NotFoundError, UsageError
from mlfleet.core.base.spawn import own_python
from mlfleet.core.base.models import (DEFAULT_LOG_MAX_SIZE, MAX_METRIC_LINE, GpuClaim, LaunchRequest, RunStatus,
                                      ServiceStatus, SlurmPlan, StreamChunk, to_plain)

from mlfleet.agents.artifacts import open_artifact, run_roots
from mlfleet.agents.codecache import CodeCache
from mlfleet.agents.logcap import read_log
from mlfleet.agents.metriclines import Scans, read_lines
from mlfleet.agents.outputs import pack_outputs, read_packed
from mlfleet.agents.secretmask import SECRET_FILE
from mlfleet.agents.rundir import STREAMS, WORK_DIR, RunDir, read_json, start_ticks, write_json_atomic
from mlfleet.agents.services import ProbeViews, service_status
from mlfleet.agents import claims, slurm, slurm_array
from mlfleet.agents.launch_env import free_port, job_environment, model_path, service_environment, service_request

# A runner that has not written runner.json this long after launch never started.
_START_GRACE_S = 30.0
MAX_READ = 4 * 1024 * 1024


def _alive(record: dict | None) -> bool:
    """Is the process in ``record`` (pid + create_time) still the one we started?"""
    if not record or not record.get("pid"):
        return False
    try:
        pid = int(record["pid"])
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if record.get("start_ticks") is not None and (ticks := start_ticks(pid)) is not None:
            return ticks == record["start_ticks"]  # immune to clock jumps
        created = record.get("create_time")
        return created is None or abs(proc.create_time() - float(created)) < 1.0
    except (psutil.Error, ValueError):
        return False


def _complete_utf8(data: bytes) -> int:
    """Length of ``data`` without a trailing, unfinished UTF-8 sequence."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:  # a lead byte: is its sequence complete?
            need = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) if back >= need else len(data) - back
    return len(data)


def _note_artifact(known: dict[str, int], line: bytes) -> None:
    try:
        artifact = msgspec.json.decode(line).get("artifact")
        known[str(artifact["path"])] = int(artifact["size"])
    except (msgspec.DecodeError, AttributeError, KeyError, TypeError, ValueError):
        pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class Supervisor:
    """The runs of one agent state dir."""

    def __init__(self, state_dir: Path, max_metric_line: int = MAX_METRIC_LINE) -> None:
        self.code = CodeCache(state_dir)
        self.state_dir = state_dir
        # The agent's probe results per service run (agents/services.py); empty where nothing probes (a fresh agent)
        self.probe_views: ProbeViews = {}
        self.max_metric_line = max_metric_line
        self._long_lines: Scans = {}  # run -> how far the end of its current long metric line was looked for
        self._artifact_scans: Scans = {}  # the same, for the artifact scan
        self.runs_dir = state_dir / "runs"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        self._ports = threading.Lock()  # a port is picked and written down by one launch at a time
        self._artifacts: dict[str, tuple[int, dict[str, int]]] = {}  # run -> (bytes scanned, path -> size)
        self.slurm_queue = slurm.SlurmQueue()  # one squeue answers every Slurm run of a poll (agents/slurm.py)
        # One Slurm submit (a job array's or a run's) at a time: a retried launch_array arriving while the first
        # is still at sbatch must see the first one's intent, not take its prepared runs for never submitted ones;
        # a poll that submits a run left unsubmitted (slurmctld was down) must not race the launch doing it.
        # Reentrant: a launch resuming an array submits a run alone under it.
        self._arrays = threading.RLock()
        self._preparing: set[str] = set()  # runs whose folder is being made by this process (not never-prepared)
        self._preparing_lock = threading.Lock()
        # Each GPU's memory as the node's telemetry last saw it (the daemon keeps it): how much a share may reserve
        self.gpu_memory_totals: dict[int, int] = {}
        self._ended: set[tuple[str, int]] = set()  # run folders with an exit record: they hold no claim, ever

    def _dir(self, run_id: str) -> RunDir:
        if not run_id or "/" in run_id or run_id.startswith(".") or len(run_id) > 200:
            raise UsageError(f"invalid run id {run_id!r}")
        return RunDir(self.runs_dir / run_id)

    def _existing(self, run_id: str) -> RunDir:
        run = self._dir(run_id)
        if not run.root.is_dir():
            raise NotFoundError(f"run {run_id} is not known on this host")
        return run

    # ------------------------------------------------------------ actions
    def launch(self, request: LaunchRequest) -> RunStatus:
        """Start a run once; asking again for the same run_id returns its status."""
        run = self._dir(request.run_id)
        if run.root.is_dir() and self._never_prepared(run):
            claims.same_controller(run, request)
            self._discard(run)  # the agent died before launch.json: nothing of it ran, so it is prepared again
        if run.root.is_dir():
            claims.same_controller(run, request)
            if (array := slurm_array.unfinished_array(run)) is not None:  # put in an array whose submit was cut short
                with self._arrays:
                    if slurm_array.intended(self.state_dir / slurm_array.ARRAYS_DIR, array):
                        self._resume_arrays({array})
                    elif request.slurm is not None:  # its array was never submitted: now alone
                        run.file(slurm.ARRAY_TASK_FILE).unlink(missing_ok=True)
                        return self._submit_slurm(run, request.slurm)
            return self.status(request.run_id)  # a Slurm run never submitted (the agent died before sbatch): now
        prepared = self._prepare(run, request)
        if isinstance(prepared, RunStatus):
            return prepared
        request = prepared
        if request.slurm is not None:
            return self._submit_slurm(run, request.slurm)
        child = subprocess.Popen(
            own_python(str(run.root), module="mlfleet.agents.runner"),
            cwd=run.root, start_new_session=True,
            stdin=subprocess.PIPE if request.secret_env else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(run.file("runner.log"), "ab"),
            close_fds=True,
        )
        if child.stdin is not None:  # the secret values: in the runner's memory, never in the run's folder
            with child.stdin:
                with contextlib.suppress(BrokenPipeError):
                    child.stdin.write(json.dumps(request.secret_env).encode())
        self._children[request.run_id] = child
        return RunStatus(run_id=request.run_id, state="starting")

    def launch_array(self, requests: list[LaunchRequest]) -> list[RunStatus]:
        """Many Slurm runs (a sweep's) as one job array (agents/slurm_array.py); each run's status.

        Asked again (a retried request, a restarted controller or agent),
        no run is submitted twice: runs already in an array are skipped, and
        an array whose submit was cut short is found in Slurm first.
        """
        plans = {msgspec.json.encode(r.slurm) for r in requests}
        if any(r.slurm is None or r.service is not None for r in requests) or len(plans) > 1:
            raise UsageError("a job array's runs must all be Slurm jobs (no servers) with the same sbatch options")
        if len(requests) > slurm_array.MAX_TASKS:
            raise UsageError(f"a job array has {slurm_array.MAX_TASKS} runs at most, not {len(requests)}")
        if len({r.run_id for r in requests}) != len(requests):
            raise UsageError("a job array names a run twice")
        with self._arrays:
            self._launch_array(requests)
        return [self.status(r.run_id) for r in requests]

    def _launch_array(self, requests: list[LaunchRequest]) -> None:
        fresh: list[RunDir] = []
        unfinished: set[str] = set()
        for request in requests:
            run = self._dir(request.run_id)
            if run.root.is_dir() and self._never_prepared(run):
                claims.same_controller(run, request)
                self._discard(run)  # the agent died between its folder and its launch.json: prepared again
            if not run.root.is_dir():
                if not isinstance(self._prepare(run, request), RunStatus):
                    fresh.append(run)
            elif run.exit is None and not run.file(slurm.SLURM_FILE).exists():
                array = slurm_array.unfinished_array(run)
                if array is not None and slurm_array.intended(self.state_dir / slurm_array.ARRAYS_DIR, array):
                    unfinished.add(array)  # maybe submitted: Slurm is asked before anything is sent again
                elif array is None and run.launch is not None and slurm_array.adopt_single(run, self.slurm_queue):
                    continue  # sent alone before, and in Slurm's queue
                elif run.launch is not None:  # prepared (its array's intent unfinished), then the agent died
                    fresh.append(run)  # before any sbatch: never submitted
        if fresh:
            assert requests[0].slurm is not None
            try:
                slurm_array.submit(self.state_dir / slurm_array.ARRAYS_DIR, fresh, requests[0].slurm, self.slurm_queue)
            except MlfleetError as exc:  # sbatch refused it: every run of it failed, with Slurm's why
                for run in fresh:
                    if not run.file(slurm.SLURM_FILE).exists():
                        run.file(SECRET_FILE).unlink(missing_ok=True)  # no runner will come to read it
                        write_json_atomic(run.file("exit.json"), {
                            "exit_code": None, "signal": None, "reason": "failed-to-start",
                            "finished_at": time.time(), "message": str(exc)})
        self._resume_arrays(unfinished)

    def _resume_arrays(self, names: set[str]) -> None:
        for name in sorted(names):
            slurm_array.resume(self.state_dir / slurm_array.ARRAYS_DIR, name, self.slurm_queue)

    def _never_prepared(self, run: RunDir) -> bool:
        """A run folder without launch.json nor exit.json that no launch of this process is making: the agent
        died between its mkdir and its launch.json (written last, by rename), so nothing of it ever ran."""
        with self._preparing_lock:
            if run.run_id in self._preparing:
                return False
        return not run.file("launch.json").exists() and not run.file("exit.json").exists()

    def _discard(self, run: RunDir) -> None:
        """Remove a never-prepared run folder (its claim goes with it) so the launch makes it again, whole."""
        aside = run.root.with_name(f".{run.run_id}.unprepared.{os.getpid()}.{time.monotonic_ns()}")
        with contextlib.suppress(FileNotFoundError):
            run.root.rename(aside)  # hidden at once: run_ids() and the claims skip dot names
            shutil.rmtree(aside, ignore_errors=True)

    def _prepare(self, run: RunDir, request: LaunchRequest) -> LaunchRequest | RunStatus:
        """The run's folder, its copy of the code and its launch.json; the request as launched, or the
        status it ended with here (asked twice at once, or its snapshot could not be copied)."""
        with self._preparing_lock:
            self._preparing.add(run.run_id)
        try:
            return self._prepare_run(run, request)
        finally:
            with self._preparing_lock:
                self._preparing.discard(run.run_id)

    def _prepare_run(self, run: RunDir, request: LaunchRequest) -> LaunchRequest | RunStatus:
        archive = None
        if request.code_hash:  # checked before the run exists: a dropped snapshot is shipped again, then launched
            if not self.code.present(request.code_hash):
                raise NotFoundError(f"snapshot {request.code_hash[:12]} is not on this host; ship it first")
            archive = self.code.verified_archive(request.code_hash)
        model = model_path(self.state_dir, request.service) if request.service else ""
        try:
            # the folder and its GPU claim, refused if another live run holds its GPUs (agents/claims.py)
            claims.make_run(self.state_dir, run, request, self.gpu_claims, self.gpu_memory_totals)
        except FileExistsError:
            claims.same_controller(run, request)
            return self.status(request.run_id)
        if archive is not None:
            try:
                work = self.code.extract_copy(archive, run.file(WORK_DIR))
                request = msgspec.structs.replace(request, workdir=str(work))
            except (OSError, MlfleetError, tarfile.TarError) as exc:  # a full disk, a tampered cache: ends here, with why
                why = exc.strerror or exc if isinstance(exc, OSError) else exc
                write_json_atomic(run.file("exit.json"), {
                    "exit_code": 127, "signal": None, "reason": "failed-to-start", "finished_at": time.time(),
                    "message": f"could not make the run's copy of snapshot {request.code_hash[:12]}: {why}"})
                return self.status(request.run_id)
        if request.service is not None:  # the port is the run's from now on, kept across restarts of the server
            with self._ports:
                port = request.service.port or free_port(self._service_ports())
                write_json_atomic(run.file("service.json"), {"port": port})
            request = service_request(request, port, model)
        env = job_environment(request, run)
        if request.service is not None:
            env.update(service_environment(request.service, run, port, model))
        if request.slurm is not None:  # Slurm gives the job its GPUs (and sets CUDA_VISIBLE_DEVICES itself)
            env.pop("CUDA_VISIBLE_DEVICES", None)
        journal = to_plain(msgspec.structs.replace(request, env=env, secret_env={}))
        journal["secret_keys"] = sorted(request.secret_env)  # the values never reach the journal (docs/secrets.md)
        if request.secret_env and request.slurm is not None:  # sbatch starts the runner: no stdin of ours
            write_json_atomic(run.file(SECRET_FILE), dict(request.secret_env))  # 0600; the runner deletes it
        write_json_atomic(run.file("launch.json"), journal)
        return request

    def controller_of(self, run_id: str) -> str:
        """The controller that launched the run, by its claim ("" when not known: an older controller or agent)."""
        return claims.controller_of(self._dir(run_id))

    def gpu_claims(self) -> list[GpuClaim]:
        """The GPUs this node's live runs hold (agents/claims.py); every telemetry sample carries them."""
        return claims.held(self.runs_dir, self._live, self._ended)

    def _live(self, run_id: str) -> bool:
        try:
            return self.status(run_id).state != "exited"
        except MlfleetError:  # removed meanwhile, or Slurm unreachable: a Slurm run holds no claim here anyway
            return False

    def _submit_slurm(self, run: RunDir, plan: SlurmPlan) -> RunStatus:
        """sbatch the run once (slurm.submit is idempotent); its status. Only Slurm's refusal fails the run:
        with slurmctld not answering it stays waiting, and a later launch or poll submits it (:meth:`status`)."""
        with self._arrays:
            if run.exit is None:
                try:
                    slurm.submit(run, plan, self.slurm_queue)
                except slurm.SlurmUnreachable as exc:
                    return RunStatus(run_id=run.run_id, state="starting",
                                     message=f"Slurm is unavailable: {exc}; it is submitted once Slurm answers")
                except MlfleetError as exc:  # sbatch refused it (a bad partition, account, QOS): failed, with why
                    run.file(SECRET_FILE).unlink(missing_ok=True)  # no runner will come to read it
                    write_json_atomic(run.file("exit.json"), {
                        "exit_code": None, "signal": None, "reason": "failed-to-start", "finished_at": time.time(),
                        "message": str(exc)})
        return self.status(run.run_id)

    def _unsubmitted(self, run: RunDir, cancelled_too: bool = False) -> SlurmPlan | None:
        """The plan of a prepared Slurm run that was never sent to Slurm alone nor put in an array (slurmctld
        was down at its launch, or the agent died between launch.json and sbatch), else None (and None for a
        cancelled one, unless ``cancelled_too``: it must not be submitted now)."""
        if (run.file(slurm.SLURM_FILE).exists() or run.file(slurm.ARRAY_TASK_FILE).exists()
                or run.file("exit.json").exists() or (run.file("cancel.json").exists() and not cancelled_too)):
            return None
        launch = run.launch
        if launch is None or launch.get("slurm") is None:
            return None
        try:
            return msgspec.convert(launch["slurm"], SlurmPlan)
        except (msgspec.ValidationError, TypeError):
            return None

    def _slurm_status(self, run: RunDir) -> RunStatus:
        """A Slurm run's status; one left unsubmitted is submitted now (unless a submit is under way here)."""
        plan = self._unsubmitted(run)
        if plan is not None and self._arrays.acquire(blocking=False):
            try:
                if self._unsubmitted(run) is not None:
                    return self._submit_slurm(run, plan)
            finally:
                self._arrays.release()
        try:
            return slurm.status(run, self.slurm_queue)
        except slurm.SlurmUnreachable as exc:  # the job goes on, or waits, without slurmctld: nothing ended
            started = run.started or {}
            return RunStatus(run_id=run.run_id, state="running" if started else "starting", pid=started.get("pid"),
                             started_at=started.get("started_at"), message=f"Slurm is unavailable: {exc}")

    def cancel(self, run_id: str) -> RunStatus:
        """Ask the run's runner to stop the job gracefully (it escalates to SIGKILL)."""
        run = self._existing(run_id)
        status = self.status(run_id)
        if status.state == "exited":
            return status
        write_json_atomic(run.file("cancel.json"), {"requested_at": time.time()})
        if slurm.is_slurm_run(run):
            with self._arrays:  # never sent to Slurm (it was down): it ends here, and is never submitted now
                if self._unsubmitted(run, cancelled_too=True) is not None:
                    run.file(SECRET_FILE).unlink(missing_ok=True)
                    write_json_atomic(run.file("exit.json"), {
                        "exit_code": None, "signal": None, "reason": "cancelled", "finished_at": time.time(),
                        "message": "cancelled before it was submitted to Slurm"})
                    return self.status(run_id)
            slurm.cancel(run, self.slurm_queue)  # Slurm signals the batch step (the runner), which stops the job gracefully
            run.file(SECRET_FILE).unlink(missing_ok=True)  # still pending: its runner will never read it
            self.slurm_queue.forget()
            return self.status(run_id)
        runner, started = run.runner, run.started
        if _alive(runner):
            os.kill(int(runner["pid"]), signal.SIGTERM)  # type: ignore[index]
        elif started and _alive(started):
            # The runner is gone: stop the job's group ourselves, SIGKILL after the grace period.
            grace = float((run.launch or {}).get("kill_grace", 10.0))
            pgid = int(started.get("pgid") or started["pid"])
            _signal_group(pgid, signal.SIGTERM)
            timer = threading.Timer(grace, _signal_group, (pgid, signal.SIGKILL))
            timer.daemon = True
            timer.start()
        return self.status(run_id)

    def _service_ports(self) -> set[int]:
        """Ports of this node's service runs that have not exited (a new replica must not get one of them)."""
        ports = set()
        for run_id in self.run_ids():
            run = RunDir(self.runs_dir / run_id)
            if (service := read_json(run.file("service.json"))) and not run.file("exit.json").exists():
                ports.add(int(service.get("port") or 0))
        return ports

    def reap(self) -> None:
        """Collect exited runner children so they do not linger as zombies."""
        for run_id, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[run_id]

    # ------------------------------------------------------------- queries
    def run_ids(self) -> list[str]:
        return sorted(p.name for p in self.runs_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def status(self, run_id: str) -> RunStatus:
        run = self._existing(run_id)
        if slurm.is_slurm_run(run):
            return self._slurm_status(run)
        exit_record = run.exit
        started = run.started
        if exit_record is not None:
            return RunStatus(
                run_id=run_id, state="exited",
                pid=(started or {}).get("pid"),
                started_at=(started or {}).get("started_at"),
                finished_at=exit_record.get("finished_at"),
                exit_code=exit_record.get("exit_code"),
                signal=exit_record.get("signal"),
                reason=exit_record.get("reason", "exited"),
                message=exit_record.get("message", ""),
                service=self._service(run, started, str(exit_record.get("reason", "exited"))),
            )
        runner = run.runner
        if _alive(runner):
            if started:
                return RunStatus(run_id=run_id, state="running", pid=started.get("pid"),
                                 started_at=started.get("started_at"), service=self._service(run, started, None))
            preparing = read_json(run.file("preparing.json")) or {}
            since = preparing.get("since") if not preparing.get("ended_at") else None
            return RunStatus(run_id=run_id, state="starting", preparing_since=since,
                             service=self._service(run, started, None))
        if runner is None and time.time() - run.root.stat().st_mtime < _START_GRACE_S:
            return RunStatus(run_id=run_id, state="starting", service=self._service(run, started, None))
        # The runner is gone without writing exit.json (host reboot, OOM killer, kill -9).
        if started and _alive(started):
            return RunStatus(run_id=run_id, state="running", pid=started.get("pid"), started_at=started.get("started_at"),
                             message="runner is gone; the job is still running",
                             service=self._service(run, started, None))
        return RunStatus(run_id=run_id, state="exited", pid=(started or {}).get("pid"),
                         started_at=(started or {}).get("started_at"), reason="lost",
                         message="the run's supervisor died without recording an exit (host reboot or kill -9?)",
                         service=self._service(run, started, "lost"))

    def _service(self, run: RunDir, started: dict | None, ended: str | None) -> ServiceStatus | None:
        """A service run's port, health and restarts (None for a job): its folder plus the agent's probes."""
        return service_status(run, self.probe_views.get(run.run_id), started, ended)

    def read(self, run_id: str, stream: str, offset: int, max_bytes: int = MAX_READ) -> StreamChunk:
        """Bytes of a stream from ``offset``; metrics and capture come in whole lines only.

        ``eof`` is true when the run has exited and this chunk reaches the
        end of the file: nothing more will ever come.
        """
        if stream not in STREAMS:
            raise UsageError(f"unknown stream {stream!r} (use {', '.join(STREAMS)})")
        if offset < 0:
            raise UsageError("offset cannot be negative")
        run = self._existing(run_id)
        exited = self.status(run_id).state == "exited"  # read before the file, so eof is never early
        path = run.stream_path(stream)
        max_bytes = max(1, min(int(max_bytes), MAX_READ))
        if stream in ("metrics", "capture"):  # whole lines; each stream remembers its own long-line scan
            key = run_id if stream == "metrics" else f"{run_id}\0{stream}"
            lines = read_lines(path, offset, max_bytes, exited, self._long_lines, key, self.max_metric_line)
            return StreamChunk(run_id=run_id, stream=stream, offset=offset, end=lines.end,
                               data=lines.data.decode("utf-8", errors="replace"),
                               eof=exited and lines.end >= lines.size, more=lines.end > offset and lines.end < lines.size,
                               long_lines=lines.long_lines)
        got = read_log(run, stream, path, offset, max_bytes)  # offsets count every byte written, kept or not
        data, size = got.data, got.size
        if not (exited and got.start + len(data) >= size):
            data = data[: _complete_utf8(data)]  # a character split by the chunk edge comes whole next time
        end = got.start + len(data)
        return StreamChunk(run_id=run_id, stream=stream, offset=got.start, end=end,
                           data=data.decode("utf-8", errors="replace"), eof=exited and end >= size,
                           more=len(data) > 0 and end < size, dropped=got.dropped,
                           max_size=int((run.launch or {}).get("log_max_size") or DEFAULT_LOG_MAX_SIZE))

    def lineage(self, run_id: str) -> dict | None:
        """What the runner recorded before the job started (lineage.json), or None while it is not written yet."""
        return read_json(self._existing(run_id).file("lineage.json"))

    def read_artifact(self, run_id: str, path: str, offset: int, max_bytes: int = MAX_READ) -> dict:
        """Bytes of a file the run logged as an artifact (and only such a file, in a folder it may share:
        agents/artifacts.py), base64 in ``data``."""
        if offset < 0:
            raise UsageError("offset cannot be negative")
        if path not in self._logged_artifacts(run_id):
            raise NotFoundError(f"run {run_id} logged no artifact {path!r} on this host")
        fd = open_artifact(path, run_roots(self._existing(run_id)), run_id)  # checked again at each read
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            fh.seek(offset)
            data = fh.read(max(1, min(int(max_bytes), MAX_READ)))
        return {"run_id": run_id, "path": path, "offset": offset, "end": offset + len(data), "size": st.st_size,
                "data": base64.b64encode(data).decode("ascii"), "eof": offset + len(data) >= st.st_size}

    def outputs_pack(self, run_id: str, outputs: dict[str, str]) -> dict[str, dict]:
        """A pipeline step's declared outputs hashed and packed in its run folder (agents/outputs.py); an ended run's only."""
        run = self._existing(run_id)
        if self.status(run_id).state != "exited":  # a job still writing its outputs would be packed half done
            raise UsageError(f"run {run_id} has not ended; its outputs are packed once it has")
        return pack_outputs(run, outputs)

    def outputs_read(self, run_id: str, name: str, offset: int, max_bytes: int = MAX_READ) -> dict:
        """Raw bytes of a packed output's tar from ``offset`` (at most MAX_READ), with ``end`` and ``eof``."""
        if not isinstance(max_bytes, int):
            raise UsageError("max_bytes must be a whole number")
        return read_packed(self._existing(run_id), name, offset, max(1, min(max_bytes, MAX_READ)))

    def _logged_artifacts(self, run_id: str) -> dict[str, int]:
        """Paths the run's metric stream names as artifacts; scanned incrementally, kept in memory.

        The stream is cut into lines exactly as ingestion cuts it (a line over
        the limit is no line at all), so a path inside an overlong line can
        never become an artifact here that the run's record does not have.
        """
        run = self._existing(run_id)
        exited = self.status(run_id).state == "exited"
        scanned, known = self._artifacts.get(run_id, (0, {}))
        path = run.stream_path("metrics")
        while True:  # in slices: a metric stream may be gigabytes
            lines = read_lines(path, scanned, MAX_READ * 4, exited, self._artifact_scans, run_id, self.max_metric_line)
            if lines.end == scanned:
                break
            for line in lines.data.split(b"\n"):
                if b'"artifact"' in line:
                    _note_artifact(known, line)
            scanned = lines.end
        self._artifacts[run_id] = (scanned, known)
        return known

    def active_count(self) -> int:
        return sum(1 for run_id in self.run_ids() if self.status(run_id).state != "exited")
