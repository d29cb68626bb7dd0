"""A real PostgreSQL for tests: Debian's package installed when absent, a throw-away cluster
(initdb) in a temporary directory, served on 127.0.0.1 on a free port.

PostgreSQL refuses to run as root, so as root the cluster belongs to the `postgres` user the
package creates (its directory outside pytest's root-only tmp tree, which that user cannot
enter). Debian's package also creates and starts a cluster on :5432 where systemd runs; the tests
never use it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BIN_GLOB = "/usr/lib/postgresql/*/bin"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _find_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    # Debian keeps the server binaries out of PATH.
    dirs = sorted(glob.glob(BIN_GLOB), key=lambda d: int(Path(d).parent.name.split(".")[0]))
    for d in reversed(dirs):
        if (Path(d) / "initdb").exists() and (Path(d) / "postgres").exists():
            return Path(d)
    return None


def ensure_postgres() -> Path:
    """The directory holding initdb, pg_ctl and postgres; installs Debian's package if absent."""
    found = _find_bindir()
    if found is not None:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"],
        check=True,
        env=env,
        capture_output=True,
    )
    found = _find_bindir()
    assert found is not None, "apt-get install postgresql provided no initdb"
    return found


class PgServer:
    """One PostgreSQL cluster; `url` is an SQLAlchemy URL for its `postgres` database."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="pd-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *argv: str) -> None:
        proc = subprocess.run([*self._as, *argv], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")

    def start(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "-A", "trust", "--no-sync", "-E", "UTF8")  # fmt: skip
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                  str(self.dir / "log"), "-o", opts, "-w", "-t", "60", "start")  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"postgres not listening on {self.port}")

    def stop(self) -> None:
        pid_file = self.data / "postmaster.pid"
        if pid_file.exists():
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                          "-w", "stop")  # fmt: skip
            except RuntimeError:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)
