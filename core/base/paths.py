"""Where an installation keeps its files.

``MLFLEET_HOME`` puts everything (config, DuckDB file, sockets, logs, the
embedded agent's state) under one folder, so that tests and users can
isolate a whole installation. Without it we follow XDG: config in
``$XDG_CONFIG_HOME/mlfleet``, data in ``$XDG_DATA_HOME/mlfleet``.

Every folder here is 0700 and every file 0600 (core/base/private.py): made so,
tightened when found looser, refused when another user owns it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from mlfleet.core.base.private import OWN_FOLDER_HINT, private_dir, tighten_tree, trusted_socket

# sun_path is 108 bytes on Linux; keep room for the NUL and be safe on macOS (104).
_MAX_SOCKET_PATH = 100
_FALLBACK_HINT = ("remove it if it is not yours (another user may have planted it to catch mlfleet's requests), "
                  "or set MLFLEET_HOME to a shorter path so the sockets live under it")


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
    def wheel_cache_dir(self) -> Path:
        """The agent's dependency wheels for nodes, one folder per (Python, platform) (``hosts bootstrap``)."""
        return self.data_dir / "wheelhouse"

    @property
    def env_wheel_dir(self) -> Path:
        """Wheels of per-job environments, by sha256 (core/environments/wheelhouse.py)."""
        return self.data_dir / "wheelhouse" / "sha256"

    @property
    def env_cache_dir(self) -> Path:
        """Cached resolutions and uv's own cache (core/environments/resolve.py)."""
        return self.data_dir / "environments"

    @property
    def model_store_dir(self) -> Path:
        """Registered model files by content: ``<sha256>/<file name>`` (core/registry/; a node may vanish,
        the model must not). Launches ship a replica's model from here."""
        return self.data_dir / "models" / "sha256"

    @property
    def capture_dir(self) -> Path:
        """Captured serving inputs as Parquet, ``<deployment>/<day>/...`` (core/deploy/capture)."""
        return self.data_dir / "captures"

    @property
    def audit_head_file(self) -> Path:
        """The audit chain's head, one fixed-width line per write, outside the DuckDB file (core/audit/head_file.py)."""
        return self.data_dir / "audit-head.log"

    @property
    def secrets_file(self) -> Path:
        """The secret store: one 0600 JSON file, never the DuckDB file (core/team/secret_store.py, docs/secrets.md)."""
        return self.data_dir / "secrets" / "secrets.json"  # its own 0700 folder: the temp files beside it too

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def local_agent_dir(self) -> Path:
        return self.data_dir / "agents" / "local"

    @property
    def run_dir(self) -> Path:
        """Folder for sockets and lock files; short enough for AF_UNIX paths (no I/O: see ensure_run_dir)."""
        root = self.socket_fallback_root
        if root is None:
            return self.data_dir / "run"
        return root / hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]

    @property
    def socket_fallback_root(self) -> Path | None:
        """``/tmp/mlfleet-UID`` when the data dir is too long for socket paths, else None.

        Everyone may create entries in /tmp, so each part of this path is
        checked for owner and mode before it is used (ensure_run_dir,
        trusted_socket).
        """
        if len(str(self.data_dir / "run" / "controller.sock")) <= _MAX_SOCKET_PATH:
            return None
        return Path("/tmp") / f"mlfleet-{os.getuid()}"

    @property
    def controller_socket(self) -> Path:
        return self.run_dir / "controller.sock"

    @property
    def controller_lock(self) -> Path:
        return self.run_dir / "controller.lock"

    def own_folders(self) -> tuple[Path, ...]:
        """The folders no command may write a user's file into (core/base/output_path.py): store, config, sockets."""
        return (self.config_dir, self.data_dir, self.run_dir)

    @property
    def local_agent_socket(self) -> Path:
        return self.run_dir / "agent-local.sock"

    def own_paths(self) -> tuple[Path, ...]:
        """Every file and folder mlfleet keeps in its folders: never packed into a job's snapshot."""
        db = self.db_path
        return (self.config_file, self.hosts_file, self.known_hosts_file, db, db.with_name(db.name + ".wal"),
                db.with_name(db.name + ".tmp"), self.code_cache_dir, self.wheel_cache_dir, self.env_cache_dir, self.log_dir,
                self.data_dir / "agents", self.run_dir, self.controller_socket, self.controller_lock,
                self.local_agent_socket, self.data_dir / "models", self.capture_dir, self.audit_head_file,
                self.secrets_file.parent)

    def ensure(self) -> None:
        """Create or reuse the folders, 0700; refuse one that another user owns or could swap."""
        for folder in (self.config_dir, self.data_dir, self.log_dir, self.local_agent_dir):
            private_dir(folder)
        self.ensure_run_dir()

    def ensure_run_dir(self) -> Path:
        """The run dir, made or checked component by component (the /tmp fallback: real folders of ours only)."""
        root = self.socket_fallback_root
        if root is None:
            return private_dir(self.run_dir)
        private_dir(root, strict=True, hint=_FALLBACK_HINT)
        return private_dir(self.run_dir, strict=True, hint=_FALLBACK_HINT)

    def trusted_socket(self, path: Path) -> bool:
        """Whether a socket of this home may be talked to (False: none yet); one we cannot trust is refused."""
        root = self.socket_fallback_root
        strict = () if root is None else (root, self.run_dir)
        return trusted_socket(path, strict=strict, hint=_FALLBACK_HINT if root else OWN_FOLDER_HINT)

    def tighten(self) -> list[Path]:
        """Take group/other bits off every file and folder of ours in this home; return root's entries left alone."""
        foreign = []
        for folder in dict.fromkeys((self.config_dir, self.data_dir)):
            foreign += tighten_tree(folder, skip=(self.local_agent_dir,))
        return foreign
