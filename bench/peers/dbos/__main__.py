"""`python -m bench.peers.dbos`: the DBOS peer, configured from the VERIFY_* environment.

It reads the settings the way `python -m service` does (service/config.py, no file), keeps its
DBOS system database beside `VERIFY_DATABASE_PATH` (`<path>.dbos.sqlite`), and stops on SIGTERM
or SIGINT. The tuning is in README.md here; each knob also reads an environment variable, so a
benchmark can try another value without editing this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sqlite3
from pathlib import Path

import uvloop
from aiohttp import web
from dbos import DBOS, DBOSConfig

from bench.peers.dbos.app import create_app
from bench.peers.dbos.workflow import Verifications
from notifier.queues import create_queue, resolve_queue_url, sqs_client
from service.config import Settings, load_settings

log = logging.getLogger("bench.peers.dbos")

#: How often DBOS's listener thread looks, for each waiting recv and get_event, whether its
#: message or event arrived: on SQLite there is no LISTEN/NOTIFY, and nothing wakes a waiter
#: in-process. DBOS's default is 1 s; see README.md for why 0.1.
POLL_SECONDS = float(os.environ.get("DBOS_PEER_POLL_SECONDS", "0.1"))
#: The threads DBOS runs its database calls on (asyncio.to_thread goes there too). Unbounded by
#: default; SQLite takes one writer at a time, so more threads only queue on its lock.
EXECUTOR_THREADS = int(os.environ.get("DBOS_PEER_EXECUTOR_THREADS", "8"))
#: SQLAlchemy's connection pool for the system database (DBOS's default is 20).
POOL_SIZE = int(os.environ.get("DBOS_PEER_POOL_SIZE", str(EXECUTOR_THREADS)))


def dbos_config(settings: Settings) -> DBOSConfig:
    database = Path(settings.database.path).resolve()
    system = database.with_name(database.name + ".dbos.sqlite")
    use_wal(system)
    return {
        "name": "verification-peer",
        "system_database_url": f"sqlite:///{system}",
        "max_executor_threads": EXECUTOR_THREADS,
        "sys_db_pool_size": POOL_SIZE,
        # DBOS pings each connection as it leaves the pool (a `SELECT 1`), which finds a server
        # that dropped it; a SQLite file has no server to drop it.
        "db_engine_kwargs": {"pool_pre_ping": False},
        "notification_listener_polling_interval_sec": POLL_SECONDS,
        "log_level": "WARNING",
        # Pinned, not computed from the source: the same code restarted recovers its workflows.
        "application_version": "peer-1",
    }


def use_wal(path: Path) -> None:
    """Put the file in WAL mode before DBOS opens it, as ours does; the mode stays with the file.

    DBOS leaves SQLite's rollback journal as it is: every commit then rewrites the journal and
    blocks readers. WAL makes a commit one append and lets the polling reads run beside it. The
    synchronous level stays SQLite's default, FULL, which is ours too.
    """
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode = WAL")


async def serve(settings: Settings) -> None:
    queue = settings.queue
    async with sqs_client(queue) as sqs:
        url = await (create_queue(sqs, queue) if queue.create else resolve_queue_url(sqs, queue))
    verifications = Verifications(settings, url)
    DBOS(config=dbos_config(settings))
    # Recovers this executor's pending workflows (on DBOS's own event loop) and starts the
    # listener thread.
    DBOS.launch()
    runner = web.AppRunner(create_app(verifications), access_log=None)
    await runner.setup()
    server = settings.server
    await web.TCPSite(runner, server.host, server.port).start()
    log.warning("DBOS peer on http://%s:%d", server.host, server.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        await verifications.close()
        DBOS.destroy(workflow_completion_timeout_sec=0)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    # uvloop, as our service runs under the benchmark (config.toml's server.event_loop).
    uvloop.run(serve(load_settings(None)))


if __name__ == "__main__":
    main()
