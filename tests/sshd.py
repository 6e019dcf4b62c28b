"""Real OpenSSH servers on 127.0.0.1 for the fleet tests.

Each :class:`SshServer` is its own ``sshd -D`` on a free high port, with a
generated host key, accepting one generated user key. Several of them are
several "hosts" on one machine. With ``per_user=True`` each OS user has
keys of their own (``AuthorizedKeysFile ROOT/keys/%u``, filled by
:meth:`SshServer.allow`): a second real user logs in with their key only.
sshd reads those files as the user logging in, so they live in a 0755
folder of their own in /tmp (the server's root is usually a 0700 one),
removed by :meth:`SshServer.remove_keys`. The README's test command installs
openssh-server; without it these tests fail, they do not skip.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mlfleet-test", "-f", str(path)],
                   check=True, capture_output=True)
    return path


class PortTakenError(RuntimeError):
    """sshd exited because its port was bound by someone else first."""


class SshServer:
    def __init__(self, root: Path, user_key: Path, log_level: str = "ERROR", per_user: bool = False) -> None:
        assert os.path.exists(SSHD), ("sshd is not installed: run the tests with 'bash scripts/test.sh', "
                                      "which installs openssh-server")
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.user_key = user_key
        self.log_level = log_level  # DEBUG1 shows each forward it makes (a jump host's proof of the route)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.started_once = False  # once it listened, its port is its address: a restart keeps it
        self.extra_config: list[str] = []  # more sshd_config lines (e.g. SetEnv), read at the next start
        self.per_user = per_user  # keys per OS user (KEYS/USER), the running user's being user_key
        self.keys_dir: Path | None = None
        if per_user:
            self.keys_dir = Path(tempfile.mkdtemp(prefix="mlfkeys", dir="/tmp"))
            os.chmod(self.keys_dir, 0o755)
        self.new_host_key()

    def new_host_key(self) -> None:
        """A fresh host key (as after a reinstall); takes effect at the next start."""
        for suffix in ("", ".pub"):
            Path(f"{self.root}/host_key{suffix}").unlink(missing_ok=True)
        keygen(self.root / "host_key")

    def start(self) -> "SshServer":
        """Listen on ``self.port``; at the first start, on another free port if someone took that one meanwhile.

        free_port() only names a port that was free a moment ago: under pytest-xdist another worker's
        server (or a replica, a controller) may bind it before sshd does. A restart keeps its port
        (the host's address), so only the first start moves.
        """
        for _ in range(5):
            try:
                return self._start()
            except PortTakenError:
                if self.started_once:
                    raise
                self.port = free_port()
        return self._start()

    def _start(self) -> "SshServer":
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        (self.root / "authorized_keys").write_text(Path(f"{self.user_key}.pub").read_text())
        if self.per_user:
            self.allow(self.user, self.user_key)
        keys = self.keys_dir / "%u" if self.keys_dir is not None else self.root / "authorized_keys"
        config = self.root / "sshd_config"
        config.write_text("\n".join([
            f"Port {self.port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {self.root / 'host_key'}",
            f"PidFile {self.root / 'sshd.pid'}",
            f"AuthorizedKeysFile {keys}",
            "StrictModes no",
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password",
            "AllowStreamLocalForwarding yes",
            "Subsystem sftp internal-sftp",
            f"LogLevel {self.log_level}",
            *self.extra_config,
            "",
        ]))
        log = open(self.root / "sshd.log", "ab")
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                said = (self.root / 'sshd.log').read_text()[-500:]
                if "Address already in use" in said:
                    raise PortTakenError(f"sshd could not bind 127.0.0.1:{self.port}: {said}")
                raise RuntimeError(f"sshd exited: {said}")
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    self.started_once = True
                    return self
            time.sleep(0.05)
        raise RuntimeError("sshd did not listen within 10 s")

    def allow(self, user: str, key: Path) -> None:
        """Let OS user ``user`` log in with the private key ``key`` (its ``.pub`` beside it); per_user servers only."""
        assert self.keys_dir is not None, "a server made without per_user=True takes one key for its one user"
        path = self.keys_dir / user
        path.write_text(Path(f"{key}.pub").read_text())
        os.chmod(path, 0o644)

    def remove_keys(self) -> None:
        """Remove the per-user keys' folder (after :meth:`stop`, when the server is done with)."""
        if self.keys_dir is not None:
            shutil.rmtree(self.keys_dir, ignore_errors=True)

    def stop(self) -> None:
        """Stop the server and its open connections (as a host going down would)."""
        self.drop_connections()
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def drop_connections(self) -> None:
        """Kill the per-connection sshd processes (the link drops; the listener stays)."""
        import psutil

        if self.process is None or self.process.poll() is not None:
            return
        for child in psutil.Process(self.process.pid).children(recursive=False):
            try:
                child.kill()
            except psutil.NoSuchProcess:  # its connection ended on its own between the listing and the kill
                pass
