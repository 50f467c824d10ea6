"""A real, throwaway PostgreSQL server for the test suite (and benchmarks).

`PgServer` runs `initdb` into a fresh temporary directory and starts a private `postgres` on
127.0.0.1 and a free port; `cleanup()` stops it and deletes everything. Nothing is shared with a
system PostgreSQL service, which need not (and should not) be running.

`initdb` and `postgres` refuse to run as root. When we are root (as in CI), the server runs as
the OS user `postgres` if it exists, otherwise as a system user `stalwart-pg` created on first
use; commands are run through `runuser` (or `su` where `runuser` is missing). As any other user,
the server simply runs as that user.

Per-test databases are cheap: build a migrated template once with `template()`, then clone it
with `fresh_database()` (`CREATE DATABASE ... TEMPLATE ...`), and drop the clone after the test.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import psycopg

PG_BIN = Path(os.environ.get("STALWART_PG_BIN", "/usr/lib/postgresql/15/bin"))
"""Where `initdb`, `pg_ctl` and `postgres` live (env `STALWART_PG_BIN` overrides)."""

SERVER_USER = "postgres"
"""The OS user the server runs as when we are root, if it exists."""

FALLBACK_USER = "stalwart-pg"
"""The system user created to run the server when we are root and `postgres` does not exist."""

SUPERUSER = "postgres"
"""The database superuser `initdb` creates; every URL connects as it (trust authentication)."""

FAST_SETTINGS = ("fsync=off", "full_page_writes=off")
"""Server settings when `durable=False`. They only matter if the machine itself crashes: a
crash of PostgreSQL alone (`stop(mode="immediate")`) loses nothing, since written WAL sits in
the OS page cache. `synchronous_commit=off` is deliberately not here: it loses transactions
committed just before an immediate stop, and with fsync off it saves no measurable time."""

StopMode = Literal["smart", "fast", "immediate"]
"""How `pg_ctl stop` shuts down: `immediate` is a crash, followed by recovery on next start."""

_BINARIES = ("initdb", "pg_ctl", "postgres")
_LOG_TAIL_LINES = 40
_START_ATTEMPTS = 3


def available() -> str | None:
    """None if a server can be started here, else a human-readable reason why not."""
    for name in _BINARIES:
        binary = PG_BIN / name
        if not (binary.is_file() and os.access(binary, os.X_OK)):
            return (
                f"PostgreSQL binary {binary} not found or not executable "
                "(install postgresql-15 or set STALWART_PG_BIN)"
            )
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed (pip install 'psycopg[binary,pool]')"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None and shutil.which("su") is None:
            return "running as root, but neither runuser nor su is available to drop privileges"
        no_user = not _user_exists(SERVER_USER) and not _user_exists(FALLBACK_USER)
        if no_user and shutil.which("useradd") is None:
            return (
                f"running as root, no {SERVER_USER!r} or {FALLBACK_USER!r} user exists, "
                "and useradd is not available to create one"
            )
    return None


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _server_user() -> str | None:
    """The OS user to run the server as, or None to run it as ourselves (we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in (SERVER_USER, FALLBACK_USER):
        if _user_exists(name):
            return name
    result = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_USER],
        capture_output=True,
        text=True,
        check=False,
    )
    # A concurrent session (pytest-xdist) may have created it between our check and useradd.
    if result.returncode != 0 and not _user_exists(FALLBACK_USER):
        raise RuntimeError(
            f"could not create the system user {FALLBACK_USER!r} to run PostgreSQL: "
            f"{result.stderr.strip() or result.stdout.strip()}"
        )
    return FALLBACK_USER


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _traversable_tmp_root() -> str:
    """A directory for the temp dir whose every ancestor other users may traverse."""
    root = Path(tempfile.gettempdir()).resolve()
    for path in (root, *root.parents):
        if not path.stat().st_mode & 0o001:
            return "/tmp"
    return str(root)


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(could not read {path}: {exc})"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class PgServer:
    """One private PostgreSQL cluster in a temporary directory, on 127.0.0.1 and a free port.

    With `durable=False` (the default) the server runs with `FAST_SETTINGS` (fsync and
    full_page_writes off): fast, and fine for tests, which never survive a power loss. A
    benchmark that measures commit cost should pass `durable=True` for default durability.
    """

    def __init__(self, *, durable: bool = False) -> None:
        self.durable = durable
        self.port: int = 0
        self.tmpdir: Path | None = None
        self._user: str | None = None
        self._running = False
        self._initialized = False
        self._templates: set[str] = set()

    # -- paths -------------------------------------------------------------------------------

    @property
    def datadir(self) -> Path:
        """The cluster's data directory."""
        return self._dir / "data"

    @property
    def logfile(self) -> Path:
        """The server's log file (pg_ctl -l)."""
        return self._dir / "server.log"

    @property
    def running(self) -> bool:
        """Whether this object started the server and has not stopped it since."""
        return self._running

    @property
    def _dir(self) -> Path:
        if self.tmpdir is None:
            raise RuntimeError("PgServer has no directory: call start() first")
        return self.tmpdir

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server: on first use, create the temp dir, run initdb and pick a port."""
        if self._running:
            return
        if not self._initialized:
            atexit.register(self.cleanup)  # a safety net; unregistered by cleanup()
            self._init()
            for attempt in range(1, _START_ATTEMPTS + 1):
                self.port = _free_port()
                try:
                    self._pg_ctl_start()
                    break
                except RuntimeError:
                    # Someone may have taken the port between our probe and the bind.
                    if attempt == _START_ATTEMPTS or "could not bind" not in _tail(self.logfile):
                        raise
        else:
            self._pg_ctl_start()
        self._running = True

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server (`pg_ctl stop -m fast|smart|immediate`); the data dir is kept.

        `immediate` is a crash as far as the database is concerned: the next start runs
        recovery.
        """
        if not self._running:
            return
        pg_ctl = str(PG_BIN / "pg_ctl")
        result = self._run(
            [pg_ctl, "-D", str(self.datadir), "-m", mode, "-w", "-t", "30", "stop"],
            what=f"pg_ctl stop -m {mode}",
            check=False,
        )
        if result.returncode != 0:
            # A server that already died (killed by a test, say) counts as stopped.
            status = self._run(
                [pg_ctl, "-D", str(self.datadir), "status"], what="pg_ctl status", check=False
            )
            if status.returncode != 3:  # 3: no server running
                raise RuntimeError(
                    f"pg_ctl stop -m {mode} failed (exit {result.returncode}): "
                    f"{(result.stdout + result.stderr).strip()}\n"
                    f"tail of {self.logfile}:\n{_tail(self.logfile)}"
                )
        self._running = False

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop the server with `mode`, then start it again on the same port and data dir."""
        self.stop(mode)
        self.start()

    def cleanup(self) -> None:
        """Stop the server if it runs (killing it if it will not stop) and remove the temp dir."""
        if self._running:
            try:
                self.stop("fast")
            except RuntimeError:
                self._kill_postmaster()
                self._running = False
        atexit.unregister(self.cleanup)
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None
        self._initialized = False
        self._templates.clear()

    def url(self, dbname: str = "postgres") -> str:
        """A libpq URL for database `dbname` on this server, as the superuser."""
        if not self.port:
            raise RuntimeError("PgServer has no port: call start() first")
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    # -- databases -----------------------------------------------------------------------------

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database `name` (cloned from `template` if given) and return its URL."""
        with self._admin() as conn:
            if template is not None:
                self._terminate_backends(conn, template)
                conn.execute(
                    f"CREATE DATABASE {_quote_ident(name)} TEMPLATE {_quote_ident(template)}"
                )
            else:
                conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database `name` if it exists, disconnecting anyone still connected to it."""
        with self._admin() as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")

    def template(self, name: str, prepare: Callable[[str], None]) -> str:
        """Create template database `name` once: create it, call `prepare(url)` to fill it
        (apply migrations, say), then mark it a template that accepts no connections.

        Later calls with the same name return at once. If `prepare` raises, the half-built
        database is dropped and the error propagates. Returns `name`.
        """
        if name in self._templates:
            return name
        with self._admin() as conn:
            row = conn.execute(
                "SELECT datistemplate FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
        if row is not None and row[0]:
            self._templates.add(name)
            return name
        if row is not None:  # left half-built by an earlier failure
            self.drop_database(name)
        url = self.create_database(name)
        try:
            prepare(url)
        except BaseException:
            self.drop_database(name)
            raise
        with self._admin() as conn:
            # No connection may stay open to a template, or CREATE DATABASE ... TEMPLATE fails
            # with "source database is being accessed by other users". Forbidding connections
            # also stops a leaked pool from reconnecting.
            conn.execute(
                f"ALTER DATABASE {_quote_ident(name)} WITH ALLOW_CONNECTIONS false IS_TEMPLATE true"
            )
            self._terminate_backends(conn, name)
        self._templates.add(name)
        return name

    def fresh_database(self, template: str) -> str:
        """Create a uniquely named database `t_<uuid hex>` cloned from `template`; its URL."""
        return self.create_database(f"t_{uuid.uuid4().hex}", template=template)

    # -- internals -----------------------------------------------------------------------------

    def _init(self) -> None:
        self._user = _server_user()
        self.tmpdir = Path(tempfile.mkdtemp(prefix="stalwart-pg-", dir=_traversable_tmp_root()))
        self.tmpdir.chmod(0o755)
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(self.tmpdir, entry.pw_uid, entry.pw_gid)
        initdb_log = self._dir / "initdb.log"
        result = self._run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(self.datadir),
                "--auth=trust",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",  # the cluster is throwaway; syncing its files only costs time
            ],
            what="initdb",
            check=False,
        )
        initdb_log.write_text(result.stdout + result.stderr)
        if result.returncode != 0:
            raise RuntimeError(
                f"initdb failed (exit {result.returncode}) in {self.datadir}; "
                f"tail of {initdb_log}:\n{_tail(initdb_log)}"
            )
        self._initialized = True

    def _options(self) -> str:
        options = [
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self._dir}",
            "-c",
            "max_connections=200",
        ]
        if not self.durable:
            for setting in FAST_SETTINGS:
                options += ["-c", setting]
        return shlex.join(options)

    def _pg_ctl_start(self) -> None:
        result = self._run(
            [
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-w",
                "-t",
                "30",
                "-l",
                str(self.logfile),
                "-o",
                self._options(),
                "start",
            ],
            what="pg_ctl start",
            check=False,
        )
        if result.returncode != 0:
            # pg_ctl -w gives up without stopping a postmaster that is still starting.
            self._kill_postmaster()
            raise RuntimeError(
                f"PostgreSQL failed to start on 127.0.0.1:{self.port} "
                f"(pg_ctl exit {result.returncode}): {(result.stdout + result.stderr).strip()}\n"
                f"tail of {self.logfile}:\n{_tail(self.logfile)}"
            )

    def _kill_postmaster(self) -> None:
        """Last resort: SIGKILL the postmaster recorded in postmaster.pid, if any."""
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split("\n", 1)[0])
            # A stale pid file may name a recycled pid: only kill our own postmaster.
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, ValueError):
            return
        if str(self.datadir).encode() not in cmdline:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
        # Its children notice the postmaster's death and exit on their own; wait briefly.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            except PermissionError:
                return
            time.sleep(0.05)

    def _run(
        self, cmd: Sequence[str], *, what: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run `cmd` as the server's OS user, in the temp dir, with a clean PG* environment."""
        argv = list(cmd)
        if self._user is not None:
            if shutil.which("runuser") is not None:
                argv = ["runuser", "-u", self._user, "--", *argv]
            else:
                argv = ["su", self._user, "-s", "/bin/sh", "-c", shlex.join(argv)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        result = subprocess.run(
            argv, cwd=self._dir, env=env, capture_output=True, text=True, check=False
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{what} failed (exit {result.returncode}): "
                f"{(result.stdout + result.stderr).strip()}\n"
                f"tail of {self.logfile}:\n{_tail(self.logfile)}"
            )
        return result

    @contextlib.contextmanager
    def _admin(self) -> Iterator[psycopg.Connection[Any]]:
        """An autocommit connection to the `postgres` database."""
        import psycopg

        if not self._running:
            raise RuntimeError("PgServer is not running: call start() first")
        with psycopg.connect(self.url(), autocommit=True, connect_timeout=10) as conn:
            yield conn

    @staticmethod
    def _terminate_backends(conn: psycopg.Connection[Any], dbname: str) -> None:
        # The timeout (ms) waits for each backend to be gone, not merely signalled.
        conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )


@contextlib.contextmanager
def started(durable: bool = False) -> Iterator[PgServer]:
    """A started `PgServer`, stopped and deleted on exit."""
    server = PgServer(durable=durable)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
