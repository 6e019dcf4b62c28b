"""The per-run supervisor process: ``python -m mlfleet.agents.runner RUNDIR``.

The agent starts one runner per run in a new session, so the run outlives
the agent (an agent restart or upgrade never kills training). The runner
starts the job in its own process group, waits for it, enforces the
timeout, turns SIGTERM into a graceful cancel (SIGTERM to the job's group,
SIGKILL after the grace period) and writes ``exit.json``. Because the
runner, not the agent, records the exit, an exit that happens while the
agent is down is still known when it comes back.

A run with an environment (``LaunchRequest.environment``) has it built or
reused first (agents/envs/build.py), its lines in the job's stdout prefixed
``[mlfleet env]``; the job then runs inside it. Before the job starts the runner hashes the spec's ``inputs:``; while it
runs, it looks up the job's Python and packages; both go to
``lineage.json``, written before ``exit.json`` (see agents/lineage.py).
The job's stdout and stderr are kept under ``log_max_size`` each by a
thread of the runner (see agents/logcap.py).

A service run (``LaunchRequest.service``, a deployment's replica) is a
server that should never end: when its process exits the runner starts it
again after a backoff, counting each exit in ``restarts.json``, and writes
``exit.json`` only when the run is cancelled (or times out). Its health is
the agent's business (agents/services.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import subprocess

import psutil

import msgspec

from mlfleet.agents.envs.build import EnvBuildCancelled, EnvBuildError, activated_environment, ensure_env
from mlfleet.agents.envs.client import refresh_client
from mlfleet.agents.failure import failure_words
from mlfleet.agents.lineage import hash_launch_inputs, job_interpreter, node_lineage
from mlfleet.agents.logcap import LogKeeper
from mlfleet.agents.rundir import RunDir, start_ticks, write_json_atomic
from mlfleet.agents.secretmask import SECRET_FILE, MaskingPump
from mlfleet.core.base.models import DEFAULT_LOG_MAX_SIZE, EnvPlan

_POLL_S = 0.1
# Slurm's limit is from the job's start, a few seconds before the runner's; its time-limit check runs late, never early
SLURM_LIMIT_SLACK_S = 5.0
ENV_LOG_PREFIX = "[mlfleet env] "  # the environment build's lines in the job's stdout


class _Runner:
    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.launch = run.launch or {}
        self.cancel_requested = False
        self.lineage: threading.Thread | None = None
        self.logs: LogKeeper | None = None
        self.proc: subprocess.Popen[bytes] | None = None  # the job's process now (a server's latest)
        self.first_started_at: float | None = None
        self.secret_env: dict[str, str] = {}  # the launch's secret values: in this process's memory only
        self.pumps: list[MaskingPump] = []  # with secrets: the pipes that mask them on the way to the log files
        self.began = time.time()

    def on_sigterm(self, signum: int, frame: object) -> None:
        self.cancel_requested = True

    def main(self) -> int:
        self.began = time.time()  # about when Slurm started the job: the batch script execs this runner
        me = psutil.Process()
        write_json_atomic(self.run.file("runner.json"), {"pid": me.pid, "create_time": me.create_time(),
                                                         "start_ticks": start_ticks(me.pid)})
        try:
            stdout = open(self.run.stream_path("stdout"), "ab", buffering=0)
            stderr = open(self.run.stream_path("stderr"), "ab", buffering=0)
        except OSError as exc:
            return self._finish(None, reason="failed-to-start", message=f"cannot open log files: {exc}")
        self.run.stream_path("metrics").touch()
        try:
            self.secret_env = read_secret_env(self.run, self.launch)
        except (OSError, ValueError) as exc:
            return self._finish(None, reason="failed-to-start", message=f"the run's secrets did not arrive: {exc}")
        files = {"stdout": stdout.fileno(), "stderr": stderr.fileno()}
        if self.secret_env:  # the job writes into pipes, the runner copies into the files, values masked
            self._log_files = (stdout, stderr)  # kept open: the pumps write into their fds
            self.pumps = [MaskingPump(stdout.fileno(), list(self.secret_env.values())),
                          MaskingPump(stderr.fileno(), list(self.secret_env.values()))]
            stdout = open(self.pumps[0].write_fd, "wb", buffering=0, closefd=False)
            stderr = open(self.pumps[1].write_fd, "wb", buffering=0, closefd=False)
        try:
            self.logs = LogKeeper(self.run, files,
                                  int(self.launch.get("log_max_size") or DEFAULT_LOG_MAX_SIZE))
        except (OSError, TypeError, ValueError) as exc:  # the cap must never stop a job from running
            logging.getLogger(__name__).warning("logs will not be kept under their limit: %s", exc)
        if self.launch.get("environment"):
            ended = self._prepare_environment(stdout)
            if ended is not None:
                return ended
        inputs, hashed = self._hash_inputs()  # before the job starts: the inputs as the job found them
        if self.cancel_requested:  # cancelled while a large input was being hashed: never start it
            return self._finish(None, reason="cancelled", message="cancelled before it started")
        proc = self._start(stderr_fd=stderr, stdout_fd=stdout)
        if isinstance(proc, int):
            return proc
        if self.logs is not None:
            self.logs.start()
        # The job's Python and packages are looked up while it runs (it may take a second).
        self.lineage = threading.Thread(target=self._record_lineage, args=(inputs, hashed), daemon=True)
        self.lineage.start()
        try:
            if self.launch.get("service"):
                return self._supervise_service(proc, stdout, stderr)
            return self._supervise(proc)
        except BaseException as exc:  # never leave a job running that nobody watches (disk full, say)
            proc = self.proc or proc
            _signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(5)
            return self._finish(None, reason="failed-to-start", message=f"the runner failed: {exc}")

    def _start(self, stdout_fd: io.RawIOBase, stderr_fd: io.RawIOBase) -> subprocess.Popen[bytes] | int:
        """Start the job's process in a group of its own and record it in started.json (an int: the runner's exit)."""
        try:
            env = {**self.launch["env"], **self.secret_env}
            if self.launch.get("slurm") is not None:  # ({}: Slurm's defaults) the GPUs Slurm gave the job, and
                # Slurm's words for it (SLURM_JOB_ID, an array's SLURM_ARRAY_TASK_ID ...) that launch.json lacks
                env = {**env, **{k: v for k, v in os.environ.items()
                                 if k.startswith("SLURM_") or k == "CUDA_VISIBLE_DEVICES"}}
            proc = subprocess.Popen(
                self.launch["argv"],
                cwd=self.launch["workdir"],
                env=env,
                stdin=subprocess.DEVNULL,  # not a file of ours: a server restarted a thousand times leaks none
                stdout=stdout_fd,
                stderr=stderr_fd,
                process_group=0,
                close_fds=True,
                umask=_job_umask(self.launch.get("env") or {}),
            )
        except (OSError, KeyError, ValueError) as exc:
            message = f"could not start {self.launch.get('argv', ['?'])[0]!r}: {getattr(exc, 'strerror', None) or exc}"
            stderr_fd.write(f"mlfleet: {message}\n".encode())
            return self._finish(None, reason="failed-to-start", message=message)
        self.proc = proc
        now = time.time()
        if self.first_started_at is None:
            self.first_started_at = now
        # started_at stays the run's first start; a restarted server's own start is process_started_at. cancel
        # (agents/supervisor.py) stops the group named here when the runner is gone.
        write_json_atomic(self.run.file("started.json"),
                          {"pid": proc.pid, "pgid": proc.pid, "create_time": _create_time(proc.pid),
                           "start_ticks": start_ticks(proc.pid), "started_at": self.first_started_at,
                           "process_started_at": now})
        return proc

    def _deadline(self) -> float | None:
        timeout = self.launch.get("timeout")
        return self.first_started_at + timeout if timeout and self.first_started_at is not None else None

    def _wait(self, proc: subprocess.Popen[bytes]) -> tuple[int, str]:
        """Wait for the job's process to end (a cancel or the timeout stops its group); its code and why it ended."""
        grace = float(self.launch.get("kill_grace", 10.0))
        deadline = self._deadline()
        reason, stop_at = "exited", None
        # WNOWAIT: see the exit without reaping, so the group id stays ours
        # until the stragglers in it are killed below.
        while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            time.sleep(_POLL_S)
            now = time.time()
            if stop_at is None and (self.cancel_requested or (deadline and now >= deadline)):
                reason = "cancelled" if self.cancel_requested else "timeout"
                _signal_group(proc.pid, signal.SIGTERM)
                stop_at = now + grace
            elif stop_at is not None and now >= stop_at:
                _signal_group(proc.pid, signal.SIGKILL)
                stop_at = float("inf")
        # Leave nothing of the job behind (dataloader workers hold GPU memory).
        _signal_group(proc.pid, signal.SIGKILL)
        return proc.wait(), reason

    def _supervise(self, proc: subprocess.Popen[bytes]) -> int:
        code, reason = self._wait(proc)
        return self._finish(code, reason=reason, message="")

    def _supervise_service(self, proc: subprocess.Popen[bytes], stdout: io.RawIOBase, stderr: io.RawIOBase) -> int:
        """Keep a model server running until it is cancelled (or times out): each exit is followed by a restart.

        The wait before a restart doubles from ``restart_backoff`` up to
        ``max_backoff`` and goes back to ``restart_backoff`` once a process
        ran ``max_backoff`` seconds. Every exit is counted in restarts.json
        before the wait, so the agent sees the crash at once (its health
        turns ``starting``); exit.json is written only when the run ends.
        """
        service = self.launch.get("service") or {}
        first = max(0.1, float(service.get("restart_backoff") or 1.0))  # never a busy loop of crashes
        most = max(first, float(service.get("max_backoff") or 30.0))
        backoff, count = first, 0
        while True:
            began = time.time()
            code, reason = self._wait(proc)
            if reason != "exited":
                return self._finish(code, reason=reason, message="")
            ended = time.time()
            delay, backoff = restart_delay(backoff, ended - began, first, most)
            count += 1
            exit_code, sig = (code, None) if code >= 0 else (None, -code)
            write_json_atomic(self.run.file("restarts.json"), {
                "count": count, "last_exit_code": exit_code, "last_exit_signal": sig, "last_exit_at": ended,
                "backoff": delay, "restart_at": ended + delay})
            stderr.write(f"mlfleet: the server {_exit_words(exit_code, sig)}; restarting it in {delay:g} s\n".encode())
            ended_here = self._sleep_unless_stopped(ended + delay)
            if ended_here is not None:
                return self._finish(None, reason=ended_here, message=f"{ended_here} while waiting to restart the server")
            started = self._start(stdout_fd=stdout, stderr_fd=stderr)
            if isinstance(started, int):
                return started
            proc = started

    def _sleep_unless_stopped(self, until: float) -> str | None:
        """Sleep until ``until``; "cancelled" or "timeout" if the run ended meanwhile (a SIGTERM ends it at once)."""
        deadline = self._deadline()
        while True:
            now = time.time()
            if self.cancel_requested:
                return "cancelled"
            if deadline and now >= deadline:
                return "timeout"
            if now >= until:
                return None
            time.sleep(min(_POLL_S, until - now))

    def _prepare_environment(self, stdout: io.RawIOBase) -> int | None:
        """Build (or reuse) the run's environment, then run the job inside it: its ``bin`` first on PATH,
        ``VIRTUAL_ENV`` set. While this lasts the run is "starting" with ``preparing_since`` (preparing.json).
        A return value is the runner's exit: the run ended here (a failed build, a cancel)."""
        since = time.time()
        try:
            plan = msgspec.convert(self.launch["environment"], EnvPlan)
        except (msgspec.ValidationError, TypeError) as exc:
            return self._finish(None, reason="failed-to-start", message=f"the run's environment is not readable: {exc}")
        write_json_atomic(self.run.file("preparing.json"), {"since": since, "env_hash": plan.env_hash})
        state_dir = self.run.root.parent.parent

        def log(line: str) -> None:
            stdout.write(f"{ENV_LOG_PREFIX}{line}\n".encode("utf-8", "replace"))

        try:
            root = ensure_env(state_dir, plan, log, cancelled=lambda: self.cancel_requested)
        except EnvBuildCancelled:
            return self._finish(None, reason="cancelled", message="cancelled before it started")
        except EnvBuildError as exc:
            log(f"failed: {exc}")
            return self._finish(None, reason="failed-to-start", message=f"environment {plan.env_hash[:12]}: {exc}")
        except Exception as exc:  # a full disk, a vanished folder: still one sentence, still no ready marker
            words = getattr(exc, "strerror", None) or exc
            log(f"failed: {words}")
            return self._finish(None, reason="failed-to-start",
                                message=f"environment {plan.env_hash[:12]} could not be built: {words}")
        finally:
            write_json_atomic(self.run.file("preparing.json"), {"since": since, "env_hash": plan.env_hash,
                                                                "ended_at": time.time()})
        try:
            refresh_client(state_dir)  # from mlfleet import track, inside the environment (agents/envs/client.py)
        except OSError as exc:  # costs the job its metrics, never its run
            log(f"mlfleet.track will not be importable in this job: {exc.strerror or exc}")
        self.launch["env"] = activated_environment(dict(self.launch.get("env") or {}), root)
        return None

    def _hash_inputs(self) -> tuple[list, int]:
        if not self.launch.get("inputs"):
            return [], 0
        state_dir = self.run.root.parent.parent
        launch = self.launch
        shared = state_dir / "code" / str(launch.get("code_hash") or "")
        if launch.get("code_hash") and shared.is_dir():
            # The run's copy was just extracted from this snapshot's verified archive; hashing the shared
            # tree lets the hash cache (keyed by real path) serve every run of the same code. A job could
            # edit that tree; what ran is still the archive's (code_hash covers files inside the snapshot).
            launch = {**launch, "workdir": str(shared)}
        try:
            return hash_launch_inputs(launch, state_dir)
        except Exception as exc:  # lineage must never stop a job from running
            logging.getLogger(__name__).warning("hashing inputs failed: %s", exc)
            return [], 0

    def _record_lineage(self, inputs: list, hashed: int) -> None:
        try:
            lineage = node_lineage(self.launch, inputs, hashed)
            write_json_atomic(self.run.file("lineage.json"), msgspec.to_builtins(lineage))
        except Exception as exc:
            logging.getLogger(__name__).warning("recording lineage failed: %s", exc)

    def _finish(self, code: int | None, reason: str, message: str) -> int:
        for pump in self.pumps:  # the job's last output reaches the files before exit.json says it ended
            pump.close()
        if self.logs is not None:  # a last cut: a finished run's logs are within the limit
            self.logs.stop()
        if self.lineage is not None:  # lineage.json comes before exit.json, so an exited run has it
            self.lineage.join(timeout=120)
        exit_code, sig = (None, None)
        if code is not None:
            exit_code, sig = (code, None) if code >= 0 else (None, -code)
        if code and reason == "exited" and not message:  # why, when its stderr says (agents/failure.py)
            message = self._failure_words()
        elif reason == "failed-to-start":
            exit_code = 127
        record = {"exit_code": exit_code, "signal": sig, "reason": reason, "message": message,
                  "finished_at": time.time()}
        if reason == "cancelled" and self.launch.get("slurm") is not None and not self.run.file("cancel.json").exists():
            record.update(self._stopped_by_slurm())
        write_json_atomic(self.run.file("exit.json"), record)
        return 0

    def _stopped_by_slurm(self) -> dict:
        """A SIGTERM that mlfleet did not ask for (no cancel.json): Slurm stopped the job (its ``--time``, a
        preemption, a scancel by hand). Why is scontrol's ``JobState``, which the agent reads (agents/slurm.py,
        ``slurm_stopped``); this is the runner's guess for when Slurm has forgotten the job by then: a timeout
        when the job ran its whole time limit, else a cancel in Slurm."""
        limit = float((self.launch.get("slurm") or {}).get("time_limit_min") or 0) * 60
        ran = time.time() - self.began
        if limit and ran >= limit - SLURM_LIMIT_SLACK_S:
            return {"reason": "timeout", "slurm_stopped": True,
                    "message": f"stopped by Slurm at its time limit ({limit / 60:g} min)"}
        return {"reason": "cancelled", "slurm_stopped": True,
                "message": "stopped by Slurm (SIGTERM without a cancel from mlfleet)"}


    def _failure_words(self) -> str:
        try:
            python = job_interpreter(list(self.launch.get("argv") or []), dict(self.launch.get("env") or {}))
            return failure_words(self.run.stream_path("stderr"), python)
        except Exception as exc:  # a reason is a courtesy: it must never keep exit.json from being written
            logging.getLogger(__name__).warning("reading why the job failed: %s", exc)
            return ""


def read_secret_env(run: RunDir, launch: dict) -> dict[str, str]:
    """The launch's secret values: from the file a Slurm submit left (deleted here), else from stdin.

    launch.json names only their keys (``secret_keys``); the agent writes the
    values into this process's stdin (or that file) and nowhere else.
    """
    keys = launch.get("secret_keys") or []
    if not keys:
        return {}
    path = run.file(SECRET_FILE)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
        path.unlink(missing_ok=True)
    except FileNotFoundError:
        raw = sys.stdin.buffer.read()
    values = json.loads(raw or b"{}")
    if not isinstance(values, dict) or set(values) != set(keys) or not all(isinstance(v, str) for v in values.values()):
        raise ValueError(f"expected the values of {', '.join(sorted(keys))}")
    return values


def _job_umask(env: dict[str, str]) -> int:
    """The user's umask for the job: the agent runs under 077 (its run folders are private), the job's own files are not.

    ``MLFLEET_USER_UMASK`` is recorded by the first mlfleet process of the
    chain (core/base/private.py); without it the job keeps this runner's umask (-1).
    """
    try:
        value = int(env.get("MLFLEET_USER_UMASK", ""), 8)
    except ValueError:
        return -1
    return value if 0 <= value <= 0o777 else -1


def restart_delay(backoff: float, ran_for: float, first: float, most: float) -> tuple[float, float]:
    """How long to wait before restarting a server that ran ``ran_for`` seconds, and the wait after that. Pure.

    The wait doubles from ``first`` up to ``most``; a process that ran
    ``most`` seconds or more was running well, so its crash starts over at ``first``.
    """
    if ran_for >= most:
        backoff = first
    return backoff, min(backoff * 2, most)


def _exit_words(code: int | None, sig: int | None) -> str:
    if sig:
        try:
            return f"was killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"was killed by signal {sig}"
    return f"exited with code {code}"


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m mlfleet.agents.runner RUNDIR", file=sys.stderr)
        return 2
    runner = _Runner(RunDir(Path(argv[0])))
    signal.signal(signal.SIGTERM, runner.on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return runner.main()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
