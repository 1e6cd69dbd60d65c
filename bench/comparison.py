"""Throughput beside a peer: ours and the same workflow on another library, one driver, alternating.

`python -m bench throughput --peer dbos` runs, in one session against one LocalStack and one fake
Twilio, `--rounds` rounds (three by default) of: ours, then the peer, each a fresh process on a
fresh database, each given a warm-up and then the saturation run of `bench/throughput.py` (N
whole verifications at concurrency C). Alternating spreads whatever else the machine is doing
over both. Then each is started once more and left with `--pending` verifications waiting: the
RSS they add per pending verification, and the CPU it spends while they wait.
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import client, stats, throughput, waiting
from bench.outcomes import OutcomeListener
from bench.phones import phone_numbers
from bench.stack import LocalStack, Stack, log, stack

NAME = "throughput_vs_peer"
#: The figures compared, as (label, how to read it from a run's report); lower is better but for
#: the first.
FIGURES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("completed/s", ("completed_per_second",)),
    ("service CPU ms/verification", ("service_cpu_ms_per_verification",)),
    ("start p50 ms", ("start_ms", "p50")),
    ("start p99 ms", ("start_ms", "p99")),
    ("code p50 ms", ("submit_ms", "p50")),
    ("code p99 ms", ("submit_ms", "p99")),
    ("code → outcome from queue p50 ms", ("submit_to_outcome_ms", "p50")),
    ("code → outcome from queue p99 ms", ("submit_to_outcome_ms", "p99")),
)
IDLE_SECONDS = 5.0


@dataclass(frozen=True)
class Options:
    peer: str = "dbos"
    n: int = 1000
    concurrency: int = 64
    warmup: int = 100
    receivers: int = 4
    rounds: int = 3
    #: Verifications left pending for the memory figure; 0 skips it.
    pending: int = 10_000


async def measure(options: Options, sqs_server: LocalStack) -> dict[str, Any]:
    o = options
    implementations = ("ours", o.peer)
    per_round = o.warmup + o.n
    phones = phone_numbers(o.rounds * len(implementations) * per_round + 2 * o.pending)
    taken = 0
    runs: dict[str, list[dict[str, Any]]] = {i: [] for i in implementations}
    approved: set[str] = set()
    memory: dict[str, dict[str, Any]] = {}
    async with (
        stack("comparison", sqs_server) as s,
        client.session(max(o.concurrency * 2, 256)) as http,
        OutcomeListener(s.sqs, s.queue.url, o.receivers) as outcomes,
    ):
        for number in range(1, o.rounds + 1):
            for implementation in implementations:
                log(f"round {number} of {o.rounds}: {implementation}")
                mine = phones[taken : taken + per_round]
                taken += per_round
                run = await _throughput(s, http, outcomes, implementation, number, mine, o)
                runs[implementation].append(run.report() | {"round": number})
                approved |= run.approved
        if o.pending:
            for implementation in implementations:
                mine = phones[taken : taken + o.pending]
                taken += o.pending
                memory[implementation] = await _pending(s, http, implementation, mine, o)
        await outcomes.settle(approved, quiet_seconds=3.0, timeout=throughput.WAIT_SECONDS)
        lost, duplicated = outcomes.lost_and_duplicated(approved)
    return {
        "parameters": {**o.__dict__},
        "runs": runs,
        "medians": {i: _medians(r) for i, r in runs.items()},
        "memory": memory,
        "outcomes": {"approved": len(approved), "lost": lost, "duplicated": duplicated},
    }


async def _throughput(
    s: Stack,
    http: Any,
    outcomes: OutcomeListener,
    implementation: str,
    number: int,
    phones: list[str],
    o: Options,
) -> throughput.Run:
    database = _database(s, implementation, f"round-{number}")
    service, _ = await s.start_service(
        throughput.TTL_SECONDS, implementation=implementation, database=database
    )
    try:
        driver = throughput.Driver(
            s, service, client.Api(http, service.url), client.Sms(http, s.twilio.url), outcomes
        )
        await driver.run(f"{implementation} warm-up", phones[: o.warmup], min(o.concurrency, 16))
        return await driver.run(f"{implementation} saturation", phones[o.warmup :], o.concurrency)
    finally:
        await service.stop()


async def _pending(
    s: Stack, http: Any, implementation: str, phones: list[str], o: Options
) -> dict[str, Any]:
    """Start `phones` and leave them pending: RSS added per verification, CPU while they wait."""
    database = _database(s, implementation, "pending")
    service, _ = await s.start_service(
        waiting.LONG_TTL_SECONDS, implementation=implementation, database=database
    )
    try:
        api, sms = client.Api(http, service.url), client.Sms(http, s.twilio.url)
        await waiting.complete(api, sms, phones[:100], 16)
        await asyncio.sleep(1)
        before = service.usage()
        sent = await sms.count()
        # The peer's starts slow down as its waiters grow (each polls): 30/s at 9,000 here.
        started = await waiting.start_all(
            api, phones[100:], min(o.concurrency * 4, 256), per_second=10
        )
        await waiting.wait_for_sms(sms, sent + len(started.ids), 120 + len(phones) / 20)
        await asyncio.sleep(2)
        after = service.usage()
        await asyncio.sleep(IDLE_SECONDS)
        idle = service.usage().cpu_seconds - after.cpu_seconds
    finally:
        await service.stop()
    count = len(started.ids)
    log(
        f"{implementation}: {count} pending,"
        f" RSS {before.rss_bytes >> 20} -> {after.rss_bytes >> 20} MiB"
    )
    return {
        "pending": count,
        "start_per_second": round(count / started.seconds, 1) if started.seconds else None,
        "rss_before_mib": round(before.rss_bytes / 2**20, 1),
        "rss_after_mib": round(after.rss_bytes / 2**20, 1),
        "rss_bytes_per_pending": round((after.rss_bytes - before.rss_bytes) / count)
        if count
        else None,
        "idle_percent_of_a_core": round(100 * idle / IDLE_SECONDS, 1),
    }


def _database(s: Stack, implementation: str, label: str) -> Path:
    folder = s.workdir / f"{implementation}-{label}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "verifications.db"


def _read(report: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = report
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _medians(reports: list[dict[str, Any]]) -> dict[str, float | None]:
    found = {}
    for label, path in FIGURES:
        values = [v for v in (_read(r, path) for r in reports) if v is not None]
        found[label] = round(statistics.median(values), 2) if values else None
    return found


def _ratio(peer: float | None, ours: float | None) -> str:
    if not peer or not ours:
        return "-"
    return f"{peer / ours:.2f}x"


def render(result: dict[str, Any]) -> str:
    r = result["results"]
    peer = r["parameters"]["peer"]
    ours_m, peer_m = r["medians"]["ours"], r["medians"][peer]
    rows = [
        [label, ours_m[label], peer_m[label], _ratio(peer_m[label], ours_m[label])]
        for label, _ in FIGURES
    ]
    memory = r["memory"]
    if memory:
        for label, key in (
            ("RSS bytes per pending verification", "rss_bytes_per_pending"),
            ("CPU while they wait, % of a core", "idle_percent_of_a_core"),
            ("starts/s while filling", "start_per_second"),
        ):
            ours_v, peer_v = memory["ours"][key], memory[peer][key]
            rows.append(
                [
                    f"{label} ({memory['ours']['pending']:,} pending)",
                    ours_v,
                    peer_v,
                    _ratio(peer_v, ours_v),
                ]
            )
    summary = stats.table(["median of the rounds", "ours", peer, f"{peer} / ours"], rows)
    each = stats.table(
        [
            "round",
            "implementation",
            "completed",
            "failed",
            "seconds",
            "completed/s",
            "CPU ms/verification",
            "start p50 / p99 ms",
            "code p50 / p99 ms",
        ],
        [
            [
                x["round"],
                name,
                x["completed"],
                x["failed"],
                x["seconds"],
                x["completed_per_second"],
                x["service_cpu_ms_per_verification"],
                f"{x['start_ms']['p50']} / {x['start_ms']['p99']}",
                f"{x['submit_ms']['p50']} / {x['submit_ms']['p99']}",
            ]
            for name in ("ours", peer)
            for x in r["runs"][name]
        ],
    )
    o = r["outcomes"]
    return "\n".join(
        [
            summary,
            "",
            each,
            "",
            f"Outcomes: {o['approved']} approved, {o['lost']} lost, {o['duplicated']} duplicated.",
        ]
    )
