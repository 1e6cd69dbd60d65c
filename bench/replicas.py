"""Benchmark 4, replicas: throughput on 1, 2 and 3 replicas sharing PostgreSQL, and failover.

1. Throughput: the throughput benchmark's saturation run (its driver, the fake Twilio, LocalStack,
   the outcome listener) against the single SQLite node, then against 1, 2 and 3 replicas of the
   service on one PostgreSQL server, a new database each. Starts go to the replicas round-robin,
   and each code to the replica after the one that started it: any replica decides any code,
   which is the replicated mode's point. Per configuration: completed verifications/s, and per
   verification the CPU of the service processes (all replicas), of PostgreSQL (the postmaster
   and everything it forked), the statements PostgreSQL ran and the transactions that wrote:
   until the last outcome, and again once the tasks the run left armed have reached their
   deadline (a short TTL) and ended. Two cores cannot show scaling; the question is whether the
   cost per verification stays flat.
2. Failover, in `bench.failover`: ten SIGKILLs of a replica holding pending verifications, the
   time until the survivors adopted them, and the codes typed meanwhile.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from bench import client, postgres, report, stats, throughput
from bench.cluster import (
    CHECK_SECONDS,
    LEASE_SECONDS,
    PENDING_METRIC,
    WAIT_SECONDS,
    Session,
    metric,
    replica_env,
    start_replica,
    why,
)
from bench.failover import failover_tables, measure_failover
from bench.outcomes import OutcomeListener
from bench.phones import phone_numbers
from bench.resources import thread_cpu, usage
from bench.stack import LocalStack, Service, log, stack

NAME = "replicas"
DRAIN_POLL_SECONDS = 1.0
#: Past the last deadline by this much, what is still armed will not end by itself.
DRAIN_MARGIN_SECONDS = 15.0
#: Each statement's text is cut to this in the results: its shape, not its whole column list.
QUERY_CHARS = 160


@dataclass(frozen=True)
class Options:
    n: int = 1000
    concurrency: int = 64
    warmup: int = 100
    receivers: int = 4
    #: The PostgreSQL configurations, by number of replicas.
    replicas: tuple[int, ...] = (1, 2, 3)
    #: TTL of the throughput configurations: short, so that the tasks a run leaves armed reach
    #: their deadline, and their cost is counted, within the run's few seconds.
    ttl: float = 15.0
    #: SIGKILLs of the failover part (0: skip it).
    kills: int = 10
    #: Verifications left pending on the replica killed, for the survivors to adopt.
    pending: int = 20
    #: Verifications of the replica killed whose codes go to the survivors right after the kill.
    coded: int = 20


class RoundRobin(client.Api):
    """The API of several replicas: each start on the next one, its code to the one after it."""

    def __init__(self, apis: Sequence[client.Api]) -> None:
        super().__init__(apis[0].http, apis[0].base_url)
        self.apis = list(apis)
        self._turn = 0
        self._decider: dict[str, client.Api] = {}

    async def start(self, phone: str) -> client.Timed:
        i, self._turn = self._turn, (self._turn + 1) % len(self.apis)
        started = await self.apis[i].start(phone)
        # With one replica it is the same one: the single-node baseline.
        self._decider[started.body["id"]] = self.apis[(i + 1) % len(self.apis)]
        return started

    async def submit(self, verification_id: str, code: str) -> client.Timed:
        return await self._decider.pop(verification_id).submit(verification_id, code)


async def measure(options: Options, sqs_server: LocalStack) -> dict[str, Any]:
    o = options
    # A number of its own for every verification: a second start for one would resend instead.
    each, configured = o.warmup + o.n, 1 + len(o.replicas)
    phones = phone_numbers(each * configured + o.kills * (o.pending + o.coded))
    batches = [phones[i * each : (i + 1) * each] for i in range(configured)]
    failover_phones = phones[each * configured :]
    secret = secrets.token_hex(32)
    async with (
        stack(NAME, sqs_server) as s,
        client.session(o.concurrency * 2) as http,
        OutcomeListener(s.sqs, s.queue.url, o.receivers) as outcomes,
    ):
        session = Session(s, http, client.Sms(http, s.twilio.url), outcomes)
        # SQLite first, before PostgreSQL exists: an idle server still costs the cores something.
        configurations = [await sqlite_configuration(session, batches[0], o)]
        async with postgres.server() as pg:
            for count, batch in zip(o.replicas, batches[1:], strict=True):
                configurations.append(
                    await postgres_configuration(session, pg, count, secret, batch, o)
                )
            failover = await measure_failover(session, pg, secret, failover_phones, o)
            server = {
                "version": pg.version,
                "statements_counted_by": pg.statements_source,
                "fsync": "on",
            }
        await outcomes.settle(session.approved, quiet_seconds=3.0, timeout=WAIT_SECONDS)
        lost, duplicated = outcomes.lost_and_duplicated(session.approved)
    results: dict[str, Any] = {
        "parameters": dataclasses.asdict(o)
        | {"lease_seconds": LEASE_SECONDS, "check_seconds": CHECK_SECONDS},
        "postgres": server,
        "configurations": configurations,
        "failover": failover,
        "outcomes": {"approved": len(session.approved), "lost": lost, "duplicated": duplicated},
    }
    results["targets"] = targets(results)
    return results


# -- 1. throughput ---------------------------------------------------------------------------


async def sqlite_configuration(session: Session, phones: list[str], o: Options) -> dict[str, Any]:
    service, _ = await session.stack.start_service(o.ttl)
    try:
        return await throughput_of(session, "SQLite, one node", [service], phones, o)
    finally:
        await service.stop()


async def postgres_configuration(
    session: Session, pg: postgres.Postgres, count: int, secret: str, phones: list[str], o: Options
) -> dict[str, Any]:
    label = f"PostgreSQL, {_replicas(count)}"
    database = f"replicas_{count}"
    env = replica_env(await pg.create_database(database), secret)
    replicas: list[Service] = []
    try:
        for _ in range(count):
            replicas.append((await start_replica(session.stack, env, o.ttl))[0])
        return await throughput_of(session, label, replicas, phones, o, pg, database)
    except RuntimeError as exc:
        # A replica that cannot start (a store that takes one process per database, say)
        # leaves this configuration unmeasured, not the rest of the run.
        log(f"{label}: not measured: {why(exc)}")
        return {"label": label, "store": "postgres", "replicas": count, "skipped": why(exc)}
    finally:
        await asyncio.gather(*(r.stop() for r in replicas))
        await pg.drop_database(database)


async def throughput_of(
    session: Session,
    label: str,
    replicas: list[Service],
    phones: list[str],
    o: Options,
    pg: postgres.Postgres | None = None,
    database: str = "",
) -> dict[str, Any]:
    """The saturation run over `replicas`, and what it cost the service and the database.

    Costs are counted twice: until the last outcome arrived, and until every task the run left
    armed has ended. A replica that holds a verification decided by another keeps its task
    until it is told (its next adoption round, a second later), or until the deadline: work the
    run caused, done later.
    """
    http = session.http
    api = RoundRobin([client.Api(http, r.url) for r in replicas])
    driver = throughput.Driver(session.stack, replicas[0], api, session.sms, session.outcomes)
    warm, measured = phones[: o.warmup], phones[o.warmup :]
    # At full concurrency, unlike throughput's: each replica's pool then opens all its
    # connections now, and a backend's start is not charged to the measured verifications.
    await driver.run(f"{label}: warm-up", warm, o.concurrency)
    # The warm-up's own leftovers are not the run's.
    await drain(http, replicas, o.ttl, time.perf_counter())
    if pg is not None:
        await pg.reset_statements()
    before, threads_before = await snapshot(replicas, pg, database), threads_of(replicas)
    run = await driver.run(label, measured, o.concurrency)
    ended = time.perf_counter()
    at_outcome, threads_after = await snapshot(replicas, pg, database), threads_of(replicas)
    session.approved |= run.approved
    armed, waited, left = await drain(http, replicas, o.ttl, ended)
    settled = await snapshot(replicas, pg, database)

    # The driver counted the last replica started as "the service": count them all instead.
    done = max(run.completed, 1)
    to_outcome = costs(before, at_outcome, done)
    run.service_cpu = to_outcome["service_cpu_ms"] * done / 1000
    run.cpu_by_process |= {k: round(v, 3) for k, v in to_outcome.pop("cpu_seconds").items()}
    run.service_threads = {k: threads_after[k] - threads_before[k] for k in threads_after}
    to_end = costs(before, settled, done)
    result: dict[str, Any] = {
        "label": label,
        "store": "postgres" if pg is not None else "sqlite",
        "replicas": len(replicas),
        "run": run.report(),
        "until_last_outcome": to_outcome,
        "until_tasks_ended": to_end
        | {"armed_after_run": armed, "seconds_waited": waited, "left": left},
        "statements": [
            {"per_verification": round(calls / done, 3), "query": query[:QUERY_CHARS]}
            for calls, query in (settled.counts.top if settled.counts else ())
        ],
    }
    log(
        f"{label}: {run.completed / run.seconds:.0f}/s; {armed} tasks left armed;"
        f" per verification until they ended: service {to_end['service_cpu_ms']} ms CPU,"
        f" PostgreSQL {to_end['postgres_cpu_ms']} ms CPU, {to_end['statements']} statements"
    )
    return result


@dataclass(frozen=True)
class Snapshot:
    #: CPU seconds so far of each replica ("replica N") and of PostgreSQL ("postgres").
    cpu: dict[str, float]
    counts: postgres.Counts | None


async def snapshot(
    replicas: list[Service], pg: postgres.Postgres | None, database: str
) -> Snapshot:
    cpu = {f"replica {i + 1}": usage(r.pid).cpu_seconds for i, r in enumerate(replicas)}
    if pg is None:
        return Snapshot(cpu, None)
    # CPU first: the connection that reads the counts costs the server a backend.
    cpu["postgres"] = pg.cpu_seconds()
    return Snapshot(cpu, await pg.counts(database))


def costs(before: Snapshot, after: Snapshot, done: int) -> dict[str, Any]:
    """What `done` verifications cost between two snapshots, per verification."""
    spent = {k: after.cpu[k] - before.cpu[k] for k in after.cpu}
    service = sum(v for k, v in spent.items() if k.startswith("replica"))
    database = spent.get("postgres")
    found: dict[str, Any] = {
        "cpu_seconds": {"service": service} | ({"postgres": database} if database else {}),
        "service_cpu_seconds_by_replica": [
            round(v, 2) for k, v in spent.items() if k.startswith("replica")
        ],
        "service_cpu_ms": round(1000 * service / done, 3),
        "postgres_cpu_ms": round(1000 * database / done, 3) if database is not None else None,
        "service_and_database_cpu_ms": round(1000 * (service + (database or 0.0)) / done, 3),
        "statements": None,
        "write_transactions": None,
    }
    if before.counts is not None and after.counts is not None:
        statements = after.counts.statements - before.counts.statements
        writes = after.counts.write_transactions - before.counts.write_transactions
        found["statements"] = round(statements / done, 2)
        found["write_transactions"] = round(writes / done, 2)
    return found


async def drain(
    http: aiohttp.ClientSession, replicas: list[Service], ttl: float, since: float
) -> tuple[int, float, int]:
    """Wait until no replica has a task armed, all verifications having started before `since`.

    Returns how many were armed at first, the seconds waited, and how many were left. /metrics
    is read once, then only after the last deadline (`since` + `ttl`): each read costs every
    replica a query and a rendering, which would be charged to the run.
    """
    begin = time.perf_counter()
    armed = first = await _armed(http, replicas)
    wake = since + ttl + DRAIN_POLL_SECONDS  # the next read: first just past the last deadline
    while armed and time.perf_counter() < since + ttl + DRAIN_MARGIN_SECONDS:
        await asyncio.sleep(max(0.0, wake - time.perf_counter()))
        wake = time.perf_counter() + DRAIN_POLL_SECONDS
        armed = await _armed(http, replicas)
    return first, round(time.perf_counter() - begin, 2), armed


async def _armed(http: aiohttp.ClientSession, replicas: list[Service]) -> int:
    return round(sum(await asyncio.gather(*(metric(http, r, PENDING_METRIC) for r in replicas))))


def threads_of(replicas: list[Service]) -> dict[str, float]:
    """The replicas' CPU on their event loop (main) threads, and on all their other threads."""
    main = other = 0.0
    for r in replicas:
        threads = thread_cpu(r.pid)
        main += threads.pop(r.pid, 0.0)
        other += sum(threads.values())
    return {"event loop": main, "other threads": other}


# -- 2. failover -----------------------------------------------------------------------------


# -- results ---------------------------------------------------------------------------------


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    f = r["failover"]
    o = r["outcomes"]
    bound = LEASE_SECONDS + CHECK_SECONDS
    failover: dict[str, Any]
    if "skipped" in f:
        failover = {"measured": f"not measured: {f['skipped']}", "met": None}
    else:
        kills, t = len(f["kills"]), f["failover_seconds"]
        in_time = f["adopted_in_time"] == kills and (t["max"] or 0) <= bound
        failover = {
            "measured": f"median {t['median']} s, max {t['max']} s over {kills} kills"
            f" ({f['adopted_in_time']} adopted in full)",
            "met": in_time,
        }
    return [
        {
            "target": f"a SIGKILLed replica's pending verifications adopted within {bound:g} s"
            f" (lease {LEASE_SECONDS:g} s + check every {CHECK_SECONDS:g} s)",
            **failover,
        },
        {
            "target": "outcomes lost or duplicated across replicas and kills: 0",
            "measured": f"{o['lost']} lost, {o['duplicated']} duplicated of {o['approved']:,}",
            "met": o["lost"] == o["duplicated"] == 0,
        },
    ]


def render(result: dict[str, Any]) -> str:
    r = result["results"]
    pg = r["postgres"]
    parts = [
        f"PostgreSQL {pg['version']} on the same machine (fsync {pg['fsync']}), a new database"
        f" per configuration; statements counted by {pg['statements_counted_by']}.",
        "",
        throughput_table(r["configurations"]),
        "",
        flatness(r["configurations"], r["parameters"]["ttl"]),
        "",
        failover_tables(r["failover"]),
        "",
        f"Outcomes: {r['outcomes']['approved']:,} approved, {r['outcomes']['lost']} lost,"
        f" {r['outcomes']['duplicated']} duplicated.",
        "",
        report.targets_table(r["targets"]),
    ]
    return "\n".join(parts)


def throughput_table(configurations: list[dict[str, Any]]) -> str:
    rows = []
    for c in configurations:
        if "skipped" in c:
            rows.append([c["label"], f"not measured: {c['skipped']}", *["-"] * 8])
            continue
        run, a, b = c["run"], c["until_last_outcome"], c["until_tasks_ended"]
        outcome = run["submit_to_outcome_ms"]
        rows.append(
            [
                c["label"],
                run["completed"],
                run["failed"],
                run["completed_per_second"],
                b["armed_after_run"],
                *(
                    _both(a[k], b[k])
                    for k in (
                        "service_cpu_ms",
                        "postgres_cpu_ms",
                        "service_and_database_cpu_ms",
                        "statements",
                        "write_transactions",
                    )
                ),
                f"{outcome['p50']} / {outcome['p99']}",
            ]
        )
    return stats.table(
        [
            "configuration",
            "completed",
            "failed",
            "completed/s",
            "tasks left armed",
            "service CPU ms/verification",
            "PostgreSQL CPU ms/verification",
            "service + database ms/verification",
            "statements/verification",
            "write transactions/verification",
            "code → outcome p50 / p99 ms",
        ],
        rows,
    )


def flatness(configurations: list[dict[str, Any]], ttl: float) -> str:
    """What the costs are, and one sentence: how they change with replicas, and against SQLite."""
    key = "service_and_database_cpu_ms"
    measured = [c for c in configurations if "skipped" not in c]
    sqlite = next((c for c in measured if c["store"] == "sqlite"), None)
    replicated = [c for c in measured if c["store"] == "postgres"]
    text = (
        "Each cost per verification: until the last outcome arrived, then (after →) until every"
        " task the run left armed had ended. Tasks left armed are those still counted by"
        " `verifications_pending` on their replicas once every verification was decided: a"
        " replica keeps its task for a verification another replica decided until it is told,"
        " at its next round (a second), or at the latest until the deadline (TTL of this part:"
        f" {ttl:g} s)."
    )
    if not replicated:
        return text + " No PostgreSQL configuration was measured."
    first = replicated[0]
    costs = ", ".join(f"{c['replicas']}: {c['until_tasks_ended'][key]} ms" for c in replicated)
    text += f"\n\nService + PostgreSQL CPU per verification, all counted, by replicas: {costs}"
    if len(replicated) > 1:
        last = replicated[-1]
        ratio = last["until_tasks_ended"][key] / first["until_tasks_ended"][key]
        text += f" ({ratio:.2f} times as much with {last['replicas']} as with {first['replicas']})"
    if sqlite is not None:
        ratio = first["until_tasks_ended"][key] / sqlite["until_tasks_ended"][key]
        text += (
            f"; the SQLite node {sqlite['until_tasks_ended'][key]} ms:"
            f" {_replicas(first['replicas'])} on PostgreSQL cost {ratio:.2f} times as much"
        )
    return text + "."


def _both(a: Any, b: Any) -> str:
    if a is None:
        return "-"
    return str(a) if a == b else f"{a} → {b}"


def _replicas(count: int) -> str:
    return f"{count} replica{'s' if count != 1 else ''}"
