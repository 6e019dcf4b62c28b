"""Where an installation keeps its files.

``MLFLEET_HOME`` puts everything (config, DuckDB file, sockets, logs, the
embedded agent's state) under one folder, so that tests and users can
isolate a whole installation. Without it we follow XDG: config in
``$XDG_CONFIG_HOME/mlfleet``, data in ``$XDG_DATA_HOME/mlfleet``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

# sun_path is 108 bytes on Linux; keep room for the NUL and be safe on macOS (104).
_MAX_SOCKET_PATH = 100


@dataclass(frozen=True)
class Home:
    """The folders of one mlfleet installation."""

    config_dir: Path
    data_dir: Path

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Home":
        env = os.environ if environ is None else environ
        if env.get("MLFLEET_CONFIG_DIR") and env.get("MLFLEET_DATA_DIR"):  # set by to_env() for child processes
            return cls(config_dir=Path(env["MLFLEET_CONFIG_DIR"]), data_dir=Path(env["MLFLEET_DATA_DIR"]))
        root = env.get("MLFLEET_HOME")
        if root:
            base = Path(root).expanduser().absolute()
            return cls(config_dir=base, data_dir=base)
        user_home = Path(env.get("HOME", str(Path.home())))
        config = Path(env.get("XDG_CONFIG_HOME") or user_home / ".config") / "mlfleet"
        data = Path(env.get("XDG_DATA_HOME") or user_home / ".local" / "share") / "mlfleet"
        return cls(config_dir=config, data_dir=data)

    def to_env(self) -> dict[str, str]:
        """Environment for a child process (controller, agent) that must use this same home."""
        return {"MLFLEET_CONFIG_DIR": str(self.config_dir), "MLFLEET_DATA_DIR": str(self.data_dir)}

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.yaml"

    @property
    def hosts_file(self) -> Path:
        return self.config_dir / "hosts.yaml"

    @property
    def known_hosts_file(self) -> Path:
        return self.config_dir / "known_hosts"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "mlfleet.duckdb"

    @property
    def code_cache_dir(self) -> Path:
        """Workdir snapshots taken at submit, by sha256 (what is shipped to hosts)."""
        return self.data_dir / "code"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def local_agent_dir(self) -> Path:
        return self.data_dir / "agents" / "local"

    @property
    def run_dir(self) -> Path:
        """Folder for sockets and lock files; short enough for AF_UNIX paths."""
        wanted = self.data_dir / "run"
        if len(str(wanted / "controller.sock")) <= _MAX_SOCKET_PATH:
            return wanted
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path("/tmp") / f"mlfleet-{os.getuid()}" / digest

    @property
    def controller_socket(self) -> Path:
        return self.run_dir / "controller.sock"

    @property
    def controller_lock(self) -> Path:
        return self.run_dir / "controller.lock"

    @property
    def local_agent_socket(self) -> Path:
        return self.run_dir / "agent-local.sock"

    def ensure(self) -> None:
        """Create the folders with private permissions."""
        for folder in (self.config_dir, self.data_dir, self.log_dir, self.run_dir, self.local_agent_dir):
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.run_dir, 0o700)
