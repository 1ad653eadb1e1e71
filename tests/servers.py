"""Throwaway servers for the tests, started by the test setup itself on 127.0.0.1 only.

CI starts on a fresh machine: whatever a server needs is installed here (Debian packages via
apt-get) when it is missing, so `make test` needs nothing set up by hand.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def apt_install(*packages: str) -> None:
    """Install Debian packages (tests run as root on these machines)."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-q", *packages], check=True, env=env, capture_output=True)


def _postgres_bin_dir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).parent if candidates else None


@dataclass
class PostgresServer:
    """A PostgreSQL server in a temp dir; `url(db)` gives a SQLAlchemy URL with the password."""

    bin_dir: Path
    data_dir: Path
    port: int
    user: str
    password: str

    def url(self, database: str = "noisesweep") -> str:
        return f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = _as_postgres(
            [str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-d", database,
             "-v", "ON_ERROR_STOP=1", "-At", "-c", sql]
        )
        return out.stdout

    def create_database(self, name: str) -> str:
        self.psql(f"CREATE DATABASE {name} OWNER {self.user}")
        return self.url(name)

    def stop(self) -> None:
        _as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "immediate", "stop"], check=False)
        shutil.rmtree(self.data_dir.parent, ignore_errors=True)

    # --- outages: the server goes away and comes back on the same port -----------------------
    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess:
        return _as_postgres([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args])

    def halt(self, mode: str = "fast") -> None:
        """Stop the server (clients see refused connections) without removing its data."""
        self._pg_ctl("-m", mode, "-w", "stop")

    def resume(self) -> None:
        """Start it again after `halt`, with the options it first started with."""
        self._pg_ctl("-w", "-l", str(self.data_dir.parent / "server.log"), "-o", _server_options(self), "start")

    def restart(self, mode: str = "fast") -> None:
        """`pg_ctl restart -m fast`: every connection is cut, the server is back within a second."""
        self._pg_ctl("-m", mode, "-w", "-l", str(self.data_dir.parent / "server.log"), "-o", _server_options(self),
                     "restart")


def _server_options(server: PostgresServer) -> str:
    return f"-h 127.0.0.1 -p {server.port} -k {server.data_dir.parent} -c fsync=off -c max_connections=200"


def _as_postgres(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """Run a PostgreSQL tool as the `postgres` user (initdb refuses to run as root)."""
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--", *cmd]
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)


def start_postgres(password: str) -> PostgresServer:
    """Install (if needed) and start a throwaway PostgreSQL on 127.0.0.1 with a password user."""
    bin_dir = _postgres_bin_dir()
    if bin_dir is None:
        apt_install("postgresql")
        bin_dir = _postgres_bin_dir()
        assert bin_dir is not None, "postgresql installed but initdb not found"
    root = Path(tempfile.mkdtemp(prefix="noisesweep-pg-"))
    data_dir = root / "data"
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    _as_postgres([str(bin_dir / "initdb"), "-D", str(data_dir), "-A", "trust", "-U", "postgres", "--no-sync"])
    # Password auth over TCP for the test user; trust for the local admin socket.
    (data_dir / "pg_hba.conf").write_text(
        "local all postgres trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
    )
    port = free_port()
    server = PostgresServer(bin_dir=bin_dir, data_dir=data_dir, port=port, user="sweeper", password=password)
    server.resume()
    deadline = time.time() + 30
    while True:
        try:
            server.psql(f"CREATE ROLE sweeper LOGIN PASSWORD '{password}'")
            break
        except subprocess.CalledProcessError:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    return server


def ensure_chromium() -> str:
    """Path of Debian's chromium, installing the package when missing."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        apt_install("chromium")
    return path
