"""What the CLI and the TUI use to talk to the controller.

:func:`connect` returns a client for a running controller, starting one in
the background first when none runs (``autostart``). With a shared
controller set (``--controller ssh://...``, MLFLEET_CONTROLLER or
controller.url: core/controller/remote.py) it connects to that one over
SSH instead, and never starts anything. Clients hold no state of their own
and never open the DuckDB file.
"""

from __future__ import annotations

import asyncio
import fcntl
from pathlib import Path
import os
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import psutil

from mlfleet.core.base.controller_url import ControllerUrl
from mlfleet.core.base.errors import MlfleetError, RemoteError, SubmitUncertainError, UnavailableError
from mlfleet.core.base.paths import Home
from mlfleet.core.base.private import open_private
from mlfleet.core.fleet.inventory import load_inventory
from mlfleet.core.base.settings import load_settings
from mlfleet.core.base.protocol import Peer, open_unix_peer
from mlfleet.core.base.spawn import own_python
from mlfleet.core.controller import target as controller_target

if TYPE_CHECKING:
    import asyncssh

START_TIMEOUT_S = 30.0
BUSY_RETRY_S = 3.0  # how long a running controller that drops our connection is retried before "busy"
START_RETRIES = 3  # a controller killed by a signal while it started is started again, this many times
SUBMIT_TIMEOUT_S = 60.0  # the first attempt: the controller snapshots the workdir before it answers


class ControllerClient:
    """A connection to the controller; ``await client.call("jobs_list")``.

    ``hello`` is the controller's answer to our hello: who we are to it
    (``user``, ``role``), whose controller it is (``owner``, ``host``), its
    ``team`` and whether a ``policy`` is active (docs/team.md, the wire).
    ``remote`` is the shared controller's URL when it was reached over SSH.
    """

    def __init__(self, peer: Peer, home: Home, hello: dict[str, Any] | None = None,
                 remote: ControllerUrl | None = None, ssh: "asyncssh.SSHClientConnection | None" = None) -> None:
        self.peer = peer
        self._ssh = ssh  # the SSH connection under a remote client: closed with it
        self.home = home
        self.hello: dict[str, Any] = dict(hello if hello is not None else peer.info)
        self.remote = remote

    @property
    def banner(self) -> str:
        """``carol's controller on head · team ml · you: alice (operator)``: what the TUI's header shows."""
        return controller_banner(self.hello, self.remote.host if self.remote is not None else None)

    async def call(self, method: str, request_timeout: float | None = 60.0, **params: Any) -> Any:
        """Call one controller method; ``request_timeout`` bounds the wait (params are the method's own)."""
        if self._ssh is None:
            return await self.peer.request(method, request_timeout=request_timeout, **params)
        from mlfleet.core.controller import remote  # an SSH client: imported only where one is dialled

        asking = asyncio.ensure_future(self.peer.request(method, request_timeout=request_timeout, **params))
        await asyncio.sleep(0)  # the request is written (it is, before its first wait)...
        remote.quick_ack(self._ssh)  # ...and only then: sending it is what made the kernel delay its ACKs
        return await asking

    @property
    def connected(self) -> bool:
        return not self.peer.closed

    async def close(self) -> None:
        await self.peer.close()
        if self._ssh is not None:
            self._ssh.close()
            await self._ssh.wait_closed()

    async def __aenter__(self) -> "ControllerClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def controller_banner(hello: dict[str, Any], host: str | None = None) -> str:
    """Whose controller, where, which team and who we are to it, in one line (the hello answer's words)."""
    owner, user, role = hello.get("owner"), hello.get("user"), hello.get("user_role")
    where = host or hello.get("host")
    parts = [f"{owner}'s controller" + (f" on {where}" if where else "") if owner else "the controller"]
    if hello.get("team"):
        parts.append(f"team {hello['team']}")
    if user:
        parts.append(f"you: {user}" + (f" ({role})" if role else ""))
    return " · ".join(parts)


def shared_controller(home: Home) -> ControllerUrl | None:
    """The shared controller this process talks to over SSH, or None for this machine's own.

    For commands that would otherwise read this machine's installation
    directly (its capture files, say): with a shared one, those files are
    on the head node, not here.
    """
    return controller_target.configured_target(home)


async def try_connect(home: Home) -> ControllerClient | None:
    """A client for a running controller, or None when none answers."""
    client = await _attempt(home)
    return client if isinstance(client, ControllerClient) else None


async def _attempt(home: Home, hello_timeout: float = 10.0) -> ControllerClient | str:
    """A client, or how the attempt failed: "no socket" (nothing listens) or "dropped" (taken, then let go)."""
    if not home.trusted_socket(home.controller_socket):  # one another user could have planted is refused
        return "no socket"
    try:
        peer = await open_unix_peer(str(home.controller_socket), "controller")
    except UnavailableError:
        return "no socket"
    try:
        await peer.hello("client", timeout=hello_timeout)
    except UnavailableError:
        await peer.close()
        return "dropped"
    return ControllerClient(peer, home)


async def connect(home: Home | None = None, autostart: bool = True) -> ControllerClient:
    """Connect to the controller of ``home``, starting it if needed.

    A controller that runs but does not take us (at its connection limit,
    out of descriptors, stuck, or still starting) is waited for a little and
    then reported as such: never "could not start", never a second one.
    """
    home = home or Home.from_env()
    target = shared_controller(home)
    if target is not None:  # a shared controller: reached over SSH, never started from here
        return await connect_remote(home, target)
    client = await _attempt(home)
    if isinstance(client, ControllerClient):
        return client
    pid = controller_pid(home)
    if pid is not None:
        running = await _wait_for_running(home, pid, dropped=client == "dropped")
        if running is not None:
            return running
        # it stopped while we waited: start a fresh one, as if none had run
    if not autostart:
        raise UnavailableError(f"no controller is running for {home.data_dir}; start one with 'mlfleet controller start'")
    load_settings(home.config_file)  # a mistake there is the user's to fix: say it here, with its line
    load_inventory(home.hosts_file)
    start = ControllerStart(home)
    try:
        return await _wait_for_start(home, start)
    finally:
        start.close()


async def connect_remote(home: Home, target: ControllerUrl) -> ControllerClient:
    """A client of the shared controller at ``target`` (core/controller/remote.py); closing it closes the SSH link."""
    from mlfleet.core.controller import remote  # an SSH client: imported only where one is dialled

    peer, hello, conn = await remote.open_remote(home, target)
    return ControllerClient(peer, home, hello, remote=target, ssh=conn)


async def _wait_for_start(home: Home, start: "ControllerStart") -> ControllerClient:
    """Wait for the controller ``start`` began to answer; when it failed, say why from its own output."""
    restarts = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_TIMEOUT_S
    while loop.time() < deadline:
        await asyncio.sleep(0.1)
        client = await try_connect(home)
        if client is not None:
            return client
        if start.process.poll() is not None:
            # It exited: maybe another controller won the race, maybe it failed. Ask once more.
            client = await try_connect(home)
            if client is not None:
                return client
            if start.process.returncode < 0 and restarts < START_RETRIES:
                # Killed by a signal as it started (the OOM killer, an admin): not a failure of its own.
                restarts += 1
                start.again()
                continue
            pid = controller_pid(home)  # another controller won the race to start: wait for it
            running = await _wait_for_running(home, pid) if pid is not None else None
            if running is not None:
                return running
            raise UnavailableError(f"the controller could not start: {_start_failure(home, start)}")
    raise UnavailableError(f"the controller did not answer within {START_TIMEOUT_S:.0f} s; "
                           f"see {home.log_dir / 'controller.log'}")


def controller_pid(home: Home) -> int | None:
    """The pid of the controller that holds ``home``'s lock, or None when none runs.

    The pid in the lock file may be stale (a killed controller, a reused
    pid): only a lock that is really held counts.
    """
    try:
        pid = int(home.controller_lock.read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    if pid <= 0 or not _alive(pid):
        return None
    return pid if lock_held(home.controller_lock) else None


def lock_held(path: Path) -> bool:
    """Whether a live process holds the flock on ``path`` (a controller's or agent's lock file)."""
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the lock if we got it: nobody held it
    return False


async def _wait_for_running(home: Home, pid: int, dropped: bool = False) -> ControllerClient | None:
    """Retry a controller that runs but did not take our connection; then say why, in one sentence.

    None when it stopped meanwhile (a ``controller stop`` under way): the caller may start a fresh one.
    """
    try:
        started = psutil.Process(pid).create_time()
    except psutil.Error:
        started = 0.0
    # One that started moments ago may not listen yet: wait for it as for a start. One that takes our
    # connection and drops it is busy: retry a little, as its clients come and go.
    starting_until = started + START_TIMEOUT_S
    busy_until: float | None = time.time() + BUSY_RETRY_S if dropped else None
    delay = 0.05
    while time.time() < (busy_until if busy_until is not None else max(starting_until, time.time() + BUSY_RETRY_S)):
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.5)
        left = busy_until - time.time() if busy_until is not None else 10.0
        client = await _attempt(home, hello_timeout=max(0.5, left))
        if isinstance(client, ControllerClient):
            return client
        if client == "dropped" and busy_until is None:
            busy_until = time.time() + BUSY_RETRY_S
        if not _alive(pid):
            return None
    try:
        cap = f"at its limit of {load_settings(home.config_file).controller.max_connections} connections"
    except MlfleetError:
        cap = "at its connection limit"
    raise UnavailableError(f"the controller (pid {pid}) for {home.data_dir} is running but too busy to take this "
                           f"connection ({cap}, controller.max_connections in {home.config_file}; out of file "
                           f"descriptors; or stuck): try again in a moment, and if this goes on see "
                           f"{home.log_dir / 'controller.log'}")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def submit_with_retry(first: ControllerClient, params: dict[str, Any], *, retry_for: float, resubmit: str,
                            reopen: Callable[[], Awaitable[ControllerClient]] | None = None,
                            on_retry: Callable[[str], None] | None = None) -> tuple[dict[str, Any], ControllerClient]:
    """Submit, and when the connection is lost or the answer does not come, ask again with the same key.

    Why: the controller may have recorded the job and died before its answer
    left; the key in ``params`` makes asking again safe (the same job comes
    back, nothing new is queued). ``reopen`` (default: :func:`connect`, which
    starts the controller again if needed) gives a new connection for each
    retry. Asking stops ``retry_for`` seconds after the first loss: then the
    outcome is unknown, and :class:`SubmitUncertainError` says how to find out
    (``resubmit`` is the command to run again). An answer, even a refusal, is
    never retried. Returns the answer and the client that gave it: ``first``,
    or a new connection the caller closes.
    """
    reopen = reopen or (lambda: connect(first.home))
    loop = asyncio.get_running_loop()
    client: ControllerClient | None = first
    deadline: float | None = None
    why, pause = "", 0.1
    while True:
        if client is not None:
            timeout = SUBMIT_TIMEOUT_S if deadline is None else max(5.0, deadline - loop.time())
            try:
                return await client.call("submit", request_timeout=timeout, **params), client
            except RemoteError:
                if client is not first:
                    await client.close()
                raise
            except UnavailableError as exc:
                why = str(exc)
                if client is not first:
                    await client.close()
                client = None
        if deadline is None:
            deadline = loop.time() + retry_for
            if on_retry is not None:
                on_retry(why)
        if loop.time() >= deadline:
            raise SubmitUncertainError(params["spec"].get("name", "the job"), params["key"], resubmit, retry_for, why)
        await asyncio.sleep(min(pause, max(0.0, deadline - loop.time())))
        pause = min(pause * 2, 1.0)
        try:
            client = await asyncio.wait_for(reopen(), max(0.1, deadline - loop.time()))
        except asyncio.TimeoutError:
            why = "it did not start again in time"
        except MlfleetError as exc:  # not started, not answering, a config mistake: the job may still exist
            why = str(exc)


class ControllerStart:
    """One start of the controller, and what that start (only it) wrote to the log.

    Why only it: the log keeps the lines of earlier starts, and a failure
    told from the log's last ``mlfleet:`` line reported an old one (a
    stale "another controller is already running") for a start that failed
    in another way. The descriptor is the file this start writes to, even if
    the controller rotates ``controller.log`` meanwhile.
    """

    def __init__(self, home: Home) -> None:
        self.home = home
        self.log_fd = -1
        self.again()

    def again(self) -> None:
        self.close()
        self.process, self.log_fd, self.offset = start_controller_process(self.home)

    def output(self, limit: int = 64 * 1024) -> list[str]:
        """The lines this start wrote (the last ``limit`` bytes of them)."""
        end = os.fstat(self.log_fd).st_size
        begin = max(self.offset, end - limit)
        if end <= begin:  # nothing written (or the file was cut shorter meanwhile)
            return []
        return os.pread(self.log_fd, end - begin, begin).decode(errors="replace").strip().splitlines()

    def close(self) -> None:
        if self.log_fd >= 0:
            os.close(self.log_fd)
            self.log_fd = -1


def start_controller_process(home: Home) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start ``mlfleet controller run`` detached from this terminal, logging to the home's log dir.

    Returns the process, a read-only descriptor of the log file it writes to and that file's size before it started.
    """
    home.ensure()
    path = home.log_dir / "controller.log"
    log = open_private(path)  # rotated by the controller (controller.log_max_size)
    try:
        reader = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # its own offset; the same file even once rotated
        size = os.fstat(log).st_size
        try:
            process = subprocess.Popen(
                own_python("controller", "run"), cwd="/",
                start_new_session=True, stdin=subprocess.DEVNULL, stdout=log, stderr=log, close_fds=True,
                env={**os.environ, **home.to_env()},
            )
        except BaseException:
            os.close(reader)
            raise
        return process, reader, size
    finally:
        os.close(log)


def _start_failure(home: Home, start: ControllerStart) -> str:
    returncode = start.process.returncode
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"it was killed by {name} {START_RETRIES + 1} times as it started; see {home.log_dir / 'controller.log'}"
    try:
        lines = start.output()
    except OSError:
        return "no log was written"
    for line in reversed(lines):
        if line.startswith("mlfleet: "):
            return line.removeprefix("mlfleet: ")
    if lines:
        return f"{lines[-1].strip()} (see {home.log_dir / 'controller.log'})"
    return f"it exited ({returncode}) without a word; see {home.log_dir / 'controller.log'}"
