"""Benchmark 4's failover part: SIGKILL a replica holding pending verifications, time the takeover.

Three replicas on a new database. For each of K kills, P + C verifications are started on one
replica (a TTL of hours) and their SMS awaited; it is SIGKILLed; the survivors'
`verifications_adopted_total` is read every 50 ms until it has grown by P: the failover time,
from the kill. The C codes go to the survivors right after the kill, each timed until its outcome
is on SQS; the P codes once they are adopted. The replica is restarted, a new process, and the
next kill takes the next one, so the kills rotate through all three.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from bench import client, postgres, stats
from bench.cluster import (
    ADOPTED_METRIC,
    WAIT_SECONDS,
    Session,
    metric,
    replica_env,
    start_replica,
    why,
)
from bench.stack import Service, log

if TYPE_CHECKING:
    from bench.replicas import Options

#: The failover's verifications must outlive the kill, the adoption and the codes by far.
FAILOVER_TTL_SECONDS = 6 * 3600.0
POLL_SECONDS = 0.05
#: Long enough for the lease to lapse many times over: a failover not seen by then failed.
FAILOVER_TIMEOUT = 30.0
#: Between the last SMS of a kill's verifications and the kill, so that the replica has recorded
#: them sent: a kill in the middle of that write would make the adopter send them again.
QUIET_BEFORE_KILL = 0.5


@dataclass
class Decided:
    """A code submitted for one of the killed replica's verifications, and its outcome."""

    #: The POST's own duration, and from the POST to the outcome's arrival on SQS.
    submit: float
    to_outcome: float
    #: From the kill to the outcome's arrival on SQS.
    since_kill: float


async def measure_failover(
    session: Session, pg: postgres.Postgres, secret: str, phones: list[str], o: Options
) -> dict[str, Any]:
    if not o.kills:
        return {"skipped": "--kills 0"}
    database = "failover"
    env = replica_env(await pg.create_database(database), secret)
    replicas: list[Service] = []
    rounds: list[dict[str, Any]] = []
    per_kill = o.pending + o.coded
    try:
        for _ in range(3):
            replicas.append((await start_replica(session.stack, env, FAILOVER_TTL_SECONDS))[0])
        for k in range(o.kills):
            mine = phones[k * per_kill : (k + 1) * per_kill]
            victim = k % len(replicas)
            outcome, replicas[victim] = await kill_once(session, replicas, victim, env, mine, o)
            rounds.append({"kill": k + 1, "replica": victim + 1, **outcome})
    except RuntimeError as exc:
        log(f"failover: not measured: {why(exc)}")
        return {"skipped": why(exc), "kills": rounds}
    finally:
        await asyncio.gather(*(r.stop() for r in replicas))
        await pg.drop_database(database)
    return failover_summary(rounds)


async def kill_once(
    session: Session,
    replicas: list[Service],
    victim: int,
    env: dict[str, str],
    phones: list[str],
    o: Options,
) -> tuple[dict[str, Any], Service]:
    """One kill: start on the victim, SIGKILL it, watch the survivors adopt, restart it."""
    http, sms = session.http, session.sms
    killed_replica = replicas[victim]
    survivors = [r for i, r in enumerate(replicas) if i != victim]
    api = client.Api(http, killed_replica.url)
    started = await asyncio.gather(*(api.start(p) for p in phones))
    codes = await asyncio.gather(*(sms.code(p, WAIT_SECONDS) for p in phones))
    pairs = [(s.body["id"], c) for s, c in zip(started, codes, strict=True)]
    left, coded = pairs[: o.pending], pairs[o.pending :]
    await asyncio.sleep(QUIET_BEFORE_KILL)
    baseline = await asyncio.gather(*(adopted(http, r) for r in survivors))
    sms_before = await sms.count()
    deciders = [client.Api(http, r.url) for r in survivors]

    killed = time.perf_counter()
    await killed_replica.kill()
    # The codes go at once, racing the adoption; the watch starts at the same moment.
    during = asyncio.create_task(decide_all(session, deciders, coded, killed))
    seconds, grown = await watch_adoption(http, survivors, baseline, o.pending, killed)
    decided_during = await during
    decided_after = await decide_all(session, deciders, left, killed)
    took = f"after {seconds:.2f} s" if seconds is not None else "not all in time"
    log(f"kill of {killed_replica.name}: {sum(grown)} adopted {took}")

    restarted, restart_seconds = await start_replica(session.stack, env, FAILOVER_TTL_SECONDS)
    outcome = {
        "failover_seconds": round(seconds, 3) if seconds is not None else None,
        "adopted_by_survivor": grown,
        "expected_adopted": o.pending,
        "codes_during_failover": decided_report(decided_during, len(coded)),
        "codes_after_adoption": decided_report(decided_after, len(left)),
        "sms_sent_again": await sms.count() - sms_before,
        "restart_healthz_seconds": round(restart_seconds, 2),
    }
    return outcome, restarted


async def watch_adoption(
    http: aiohttp.ClientSession,
    survivors: list[Service],
    baseline: Sequence[float],
    expected: int,
    killed: float,
) -> tuple[float | None, list[int]]:
    """Read the survivors' adoption counters every 50 ms until they have grown by `expected`.

    Returns the seconds from the kill to the answer that showed it (None: not within
    FAILOVER_TIMEOUT), and how many each survivor adopted.
    """
    next_at = time.perf_counter()
    while True:
        counts = await asyncio.gather(*(adopted(http, r) for r in survivors))
        grown = [round(c - b) for c, b in zip(counts, baseline, strict=True)]
        now = time.perf_counter()
        if sum(grown) >= expected:
            return now - killed, grown
        if now - killed > FAILOVER_TIMEOUT:
            return None, grown
        next_at += POLL_SECONDS
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))


async def adopted(http: aiohttp.ClientSession, service: Service) -> float:
    return await metric(http, service, ADOPTED_METRIC)


async def decide_all(
    session: Session, apis: list[client.Api], pairs: list[tuple[str, str]], killed: float
) -> list[Decided | str]:
    """Submit every code, spread over `apis`, each timed until its outcome is on SQS."""

    async def one(i: int, verification_id: str, code: str) -> Decided | str:
        try:
            submitted = time.perf_counter()
            answer = await apis[i % len(apis)].submit(verification_id, code)
            if answer.body["status"] != "approved":
                return f"{verification_id} was {answer.body['status']}"
            session.approved.add(verification_id)
            arrival = await session.outcomes.wait(verification_id, WAIT_SECONDS)
        except Exception as exc:
            return f"{verification_id}: {exc!r}"
        return Decided(answer.seconds, arrival.perf - submitted, arrival.perf - killed)

    return list(await asyncio.gather(*(one(i, v, c) for i, (v, c) in enumerate(pairs))))


def decided_report(decided: list[Decided | str], expected: int) -> dict[str, Any]:
    done = [d for d in decided if isinstance(d, Decided)]
    return {
        "submitted": expected,
        "approved": len(done),
        "failures": [d for d in decided if isinstance(d, str)][:5],
        "submit_ms": stats.summary_ms([d.submit for d in done]),
        "to_outcome_ms": stats.summary_ms([d.to_outcome for d in done]),
        "since_kill_ms": stats.summary_ms([d.since_kill for d in done]),
        # Kept whole, so that the summary can pool the kills.
        "to_outcome_seconds": [round(d.to_outcome, 4) for d in done],
    }


def failover_summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    times = [r["failover_seconds"] for r in rounds if r["failover_seconds"] is not None]
    during = [x for r in rounds for x in r["codes_during_failover"]["to_outcome_seconds"]]
    after = [x for r in rounds for x in r["codes_after_adoption"]["to_outcome_seconds"]]
    return {
        "kills": rounds,
        "adopted_in_time": len(times),
        "failover_seconds": {
            "median": round(statistics.median(times), 3) if times else None,
            "min": min(times, default=None),
            "max": max(times, default=None),
        },
        "codes_during_failover_to_outcome_ms": stats.summary_ms(during),
        "codes_after_adoption_to_outcome_ms": stats.summary_ms(after),
        "code_failures": sum(
            len(r[k]["failures"])
            for r in rounds
            for k in ("codes_during_failover", "codes_after_adoption")
        ),
        "sms_sent_again": sum(r["sms_sent_again"] for r in rounds),
    }


def failover_tables(f: dict[str, Any]) -> str:
    if "skipped" in f:
        return f"Failover: not measured: {f['skipped'].rstrip('.')}."
    rows = [
        [
            k["kill"],
            f"#{k['replica']}",
            f"{sum(k['adopted_by_survivor'])} of {k['expected_adopted']}"
            f" ({' + '.join(map(str, k['adopted_by_survivor']))})",
            k["failover_seconds"],
            _p50_max(k["codes_during_failover"]["to_outcome_ms"]),
            _p50_max(k["codes_after_adoption"]["to_outcome_ms"]),
            k["sms_sent_again"],
        ]
        for k in f["kills"]
    ]
    kills = stats.table(
        [
            "kill",
            "replica killed",
            "adopted (by each survivor)",
            "failover s",
            "codes during failover → outcome p50 / max ms",
            "codes after adoption → outcome p50 / max ms",
            "SMS sent again",
        ],
        rows,
    )
    t, during, after = (
        f["failover_seconds"],
        f["codes_during_failover_to_outcome_ms"],
        f["codes_after_adoption_to_outcome_ms"],
    )
    summary = stats.table(
        ["failover", "median", "p99", "max", "count"],
        [
            ["SIGKILL → all adopted (s)", t["median"], "-", t["max"], len(f["kills"])],
            [
                "codes sent at the kill → outcome on SQS (ms)",
                during["p50"],
                during["p99"],
                during["max"],
                during["count"],
            ],
            [
                "codes sent after adoption → outcome on SQS (ms)",
                after["p50"],
                after["p99"],
                after["max"],
                after["count"],
            ],
        ],
    )
    failures = f"Codes that failed: {f['code_failures']}; SMS sent again: {f['sms_sent_again']}."
    return "\n".join([kills, "", summary, "", failures])


def _p50_max(s: dict[str, Any]) -> str:
    return f"{s['p50']} / {s['max']}" if s["count"] else "-"
