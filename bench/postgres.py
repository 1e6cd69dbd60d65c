"""PostgreSQL for the benchmarks: a server of the run's own, a fresh database per configuration.

Started from the binaries `pg_config --bindir` names (Debian's postgresql-15), in a temporary
directory on a free port, and stopped with `-m immediate` at the end. initdb refuses to run as
root, so as root the directory belongs to the user postgres and the server runs as it. Unlike the
tests' server (tests/support/postgres.py, which bench does not import), fsync stays on: the
service on SQLite is measured with `synchronous = FULL`, so PostgreSQL pays for durability too.

What the server did is read two ways: the CPU of the postmaster and every process it forked,
from /proc, and the statements it ran, from pg_stat_statements (preloaded at start), or, where
that extension is missing, the transactions pg_stat_database counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]

from bench.resources import TICKS
from bench.stack import free_port, log

#: initdb refuses to run as root; as root, the server runs as this user.
SERVER_USER = "postgres"
START_TIMEOUT = 60.0
#: PostgreSQL 15 flushes a busy backend's counters to pg_stat_database at most this often, and
#: an idle one's within 10 s: reading xact_commit sooner could miss the last transactions.
STATS_FLUSH_SECONDS = 11.0
#: Statements kept by name in a result: enough to see what a verification runs.
TOP = 15


@dataclass(frozen=True)
class Counts:
    """What the server had done in one database by some moment, to subtract from a later one."""

    #: Statements pg_stat_statements counted (top-level, BEGIN and COMMIT included); or
    #: committed plus rolled-back transactions when `source` is "xact_commit".
    statements: int
    #: Transaction ids handed out, server-wide: one per transaction that wrote anything.
    write_transactions: int
    #: The most frequent statements since the last reset, as (calls, query with $n for values):
    #: what a verification's statements are. Empty without pg_stat_statements.
    top: tuple[tuple[int, str], ...] = ()


class Postgres:
    """A running server: its URLs, its processes' CPU, and counts of what it executed."""

    def __init__(self, bindir: Path, base: Path, port: int, statements_source: str) -> None:
        self.bindir = bindir
        self.base = base
        self.port = port
        #: "pg_stat_statements", or "xact_commit" where the extension is not available.
        self.statements_source = statements_source
        self.version = ""

    @property
    def data(self) -> Path:
        return self.base / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def postmaster_pid(self) -> int:
        # postmaster.pid's first line; pg_ctl's own pid is gone once the server is up.
        return int((self.data / "postmaster.pid").read_text().split()[0])

    async def prepare(self) -> None:
        """CREATE EXTENSION pg_stat_statements if the server has it; note the server's version."""
        async with self._admin() as db:
            if self.statements_source == "pg_stat_statements":
                try:
                    await db.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
                except asyncpg.PostgresError as exc:
                    log(f"no pg_stat_statements ({exc}); counting transactions instead")
                    self.statements_source = "xact_commit"
            self.version = str(await db.fetchval("SHOW server_version"))

    async def create_database(self, name: str) -> str:
        """A new, empty database (dropped first if a run left one behind); returns its URL."""
        async with self._admin() as db:
            await db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await db.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    async def drop_database(self, name: str) -> None:
        """Gone, so that autovacuum on its tables is not charged to the next configuration."""
        async with self._admin() as db:
            await db.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def cpu_seconds(self) -> float:
        """CPU used so far by the postmaster and every process it forked, live or ended.

        A backend or autovacuum worker that ended was reaped by the postmaster, so its time is in
        the postmaster's cutime and cstime; the live ones are read one by one.
        """
        postmaster = self.postmaster_pid
        total = _cpu_with_children(postmaster)
        for pid in _children(postmaster):
            with contextlib.suppress(OSError):  # it ended meanwhile: then it is in cutime
                total += _cpu_with_children(pid)
        return total

    async def counts(self, database: str) -> Counts:
        """Statements and write transactions so far in `database` (see `Counts`)."""
        if self.statements_source != "pg_stat_statements":
            await asyncio.sleep(STATS_FLUSH_SECONDS)
        async with self._admin() as db:
            # xmax of a snapshot is the next transaction id: reading it assigns none.
            xid = int(await db.fetchval("SELECT pg_snapshot_xmax(pg_current_snapshot())::text"))
            if self.statements_source != "pg_stat_statements":
                statements = await db.fetchval(
                    "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
                    database,
                )
                return Counts(int(statements or 0), xid)
            rows = await db.fetch(
                "SELECT s.calls, s.query FROM pg_stat_statements AS s"
                " JOIN pg_database AS d ON d.oid = s.dbid WHERE d.datname = $1"
                " ORDER BY s.calls DESC",
                database,
            )
        top = tuple((int(r["calls"]), " ".join(r["query"].split())) for r in rows[:TOP])
        return Counts(sum(int(r["calls"]) for r in rows), xid, top)

    async def reset_statements(self) -> None:
        """Empty pg_stat_statements, so that it holds less than its 5,000 entries' worth."""
        if self.statements_source == "pg_stat_statements":
            async with self._admin() as db:
                await db.execute("SELECT pg_stat_statements_reset()")

    @contextlib.asynccontextmanager
    async def _admin(self) -> AsyncIterator[asyncpg.Connection]:
        # Connected to "postgres", never to a measured database: its statements are not counted.
        db = await asyncpg.connect(self.url(), timeout=10)
        try:
            yield db
        finally:
            await db.close()


@contextlib.asynccontextmanager
async def server() -> AsyncIterator[Postgres]:
    """A new server, ready; stopped at once on the way out, whatever happened."""
    bindir = server_bindir()
    if bindir is None:
        raise RuntimeError(
            "PostgreSQL's server is not installed: run `apt-get install postgresql-15` (Debian)."
        )
    with tempfile.TemporaryDirectory(prefix="bench-postgres-") as name:
        base = Path(name)
        if os.geteuid() == 0:
            user = pwd.getpwnam(SERVER_USER)
            os.chown(base, user.pw_uid, user.pw_gid)
        # The superuser is "postgres" whoever runs this; trust: a loopback server for one run.
        initdb = (str(bindir / "initdb"), "-D", str(base / "data"), "-U", "postgres")
        await _run(base, *initdb, "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
        pg = await _start(bindir, base)
        try:
            await pg.prepare()
            log(
                f"PostgreSQL {pg.version} (pid {pg.postmaster_pid}) on port {pg.port};"
                f" statements counted by {pg.statements_source}"
            )
            yield pg
        finally:
            pg_ctl = str(bindir / "pg_ctl")
            # Immediate: a replica's connections must not hold the stop up; the data is thrown away.
            await _run(
                base, pg_ctl, "-D", str(pg.data), "-m", "immediate", "-w", "stop", check=False
            )


def server_bindir() -> Path | None:
    """The folder with initdb and pg_ctl: `pg_config --bindir`'s, else Debian's newest."""
    candidates = []
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(found.stdout.strip())
    # Debian's pg_config may come from libpq-dev and name /usr/bin, where no initdb is.
    candidates += sorted((str(p) for p in Path("/usr/lib/postgresql").glob("*/bin")), reverse=True)
    for candidate in candidates:
        if candidate and all((Path(candidate) / tool).exists() for tool in ("initdb", "pg_ctl")):
            return Path(candidate)
    return None


async def _start(bindir: Path, base: Path) -> Postgres:
    """pg_ctl start with pg_stat_statements preloaded; without it if the server refuses it."""
    port = free_port()
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1"
    preload = "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=top"
    for extra, source in ((preload, "pg_stat_statements"), ("", "xact_commit")):
        pg_ctl = (str(bindir / "pg_ctl"), "-D", str(base / "data"), "-l", str(base / "server.log"))
        wait = ("-w", "-t", str(int(START_TIMEOUT)))
        started = await _run(base, *pg_ctl, "-o", f"{options} {extra}", *wait, "start", check=False)
        if started == 0:
            return Postgres(bindir, base, port, source)
        log(f"PostgreSQL did not start with {extra or 'the defaults'}:\n{_tail(base)}")
    raise RuntimeError(f"PostgreSQL on 127.0.0.1:{port} did not start:\n{_tail(base)}")


async def _run(base: Path, *command: str, check: bool = True) -> int:
    """A server command, as the server's user when run as root; its exit status."""
    prefix = ["runuser", "-u", SERVER_USER, "--"] if os.geteuid() == 0 else []
    # cwd: the server's user may not be allowed into the directory the bench runs in.
    # Output to a file, not a pipe: the server pg_ctl starts would hold a pipe open for its life.
    with tempfile.TemporaryFile() as out:
        process = await asyncio.create_subprocess_exec(
            *prefix, *command, cwd=base, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
        try:
            status = await asyncio.wait_for(process.wait(), START_TIMEOUT + 10)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise TimeoutError(f"{Path(command[0]).name} took over {START_TIMEOUT:g} s") from None
        if check and status != 0:
            out.seek(0)
            output = out.read().decode(errors="replace")
            raise RuntimeError(f"{Path(command[0]).name} failed ({status}):\n{output}")
        return status


def _tail(base: Path, lines: int = 20) -> str:
    log_path = base / "server.log"
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    return "\n".join(text.splitlines()[-lines:])


def _stat(pid: int) -> list[str]:
    # The command name may hold spaces and parentheses; the fields start after the last ")".
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def _cpu_with_children(pid: int) -> float:
    """utime + stime + cutime + cstime of `pid` (fields 14-17 of proc(5)), in seconds."""
    fields = _stat(pid)
    return sum(int(f) for f in fields[11:15]) / TICKS


def _children(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (ppid: field 4 of proc(5))."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            if int(_stat(int(entry.name))[1]) == pid:
                found.append(int(entry.name))
    return found
