"""Benchmark 2, waiting at scale: M verifications left pending, a crash, and the restart.

Deadlines are stored absolute, so the run uses three
processes of the service on one database:

1. service #1, TTL of hours: W warm-up verifications completed, RSS read; the M verifications
   started and left pending; once every SMS is out, RSS read again and idle CPU measured.
   Then SIGTERM, a graceful stop.
2. service #2, the same TTL: recovers the M (a restart after a graceful stop), starts the small
   "expiring" cohort, then is SIGKILLed once their SMS are out; the cohort's deadlines are then
   brought to `expiring_in` seconds after the kill, in the database. (A service started with a
   short TTL would cut every deadline found longer down to it, as it does when the clock has
   been set back: the M with them.)
3. the driver waits until that cohort's deadlines have passed, so they expire during the outage,
   and starts service #3: the timed restart. It must log "recovered: M resumed (0 SMS to send
   again), E expired while down"; then a sample of the M is approved with the codes they were
   sent before the crash, and each expired one must read `expired`, its outcome on the queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import sqlite3
import time
from dataclasses import dataclass, field
from typing import Any

from bench import client, profiler, report, stats
from bench.outcomes import OutcomeListener
from bench.phones import phone_numbers
from bench.stack import RESULTS, LocalStack, Service, log, stack

NAME = "waiting"
#: Where a run of a million or more is kept, so the regular run does not overwrite it.
STRETCH = "waiting_stretch"
STRETCH_M = 1_000_000
LONG_TTL_SECONDS = 6 * 3600.0
RECOVERED = re.compile(r"recovered: (\d+) resumed \((\d+) SMS to send again\), (\d+) expired")
WARMUP = 200
KB = 1024


@dataclass(frozen=True)
class Options:
    m: int = 100_000
    concurrency: int = 256
    expiring: int = 100
    #: Seconds after the kill that the expiring cohort's deadlines fall.
    expiring_in: float = 2.0
    sample: int = 100
    idle_seconds: float = 10.0
    #: Profile service #3 from its spawn until it has recovered (its timings then suffer).
    profile: bool = False


@dataclass
class Started:
    ids: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)
    expires_at: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def start_all(
    api: client.Api, phones: list[str], concurrency: int, per_second: float = 50
) -> Started:
    """Start a verification for each phone, `concurrency` at a time; none is answered.

    Given two minutes, plus a second for every `per_second` of them.
    """
    started = Started()
    numbered = iter(phones)
    begin = time.perf_counter()
    last_report = begin

    async def worker() -> None:
        nonlocal last_report
        for phone in numbered:
            try:
                r = await api.start(phone)
            except Exception as exc:
                started.failures.append(f"{phone}: {exc!r}")
                if len(started.failures) > max(100, len(phones) // 100):
                    raise RuntimeError(f"too many failed starts: {started.failures[:3]}") from exc
                continue
            started.ids.append(r.body["id"])
            started.phones.append(phone)
            started.expires_at.append(r.body["expires_at"])
            started.latencies.append(r.seconds)
            if time.perf_counter() - last_report > 10:
                last_report = time.perf_counter()
                rate = len(started.ids) / (last_report - begin)
                log(f"  {len(started.ids):,} of {len(phones):,} started ({rate:,.0f}/s)")

    deadline = 120 + len(phones) / per_second
    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    _, late = await asyncio.wait(workers, timeout=deadline)
    for task in late:
        task.cancel()
    await asyncio.gather(*late, return_exceptions=True)  # cancelled, not yet done, till then
    for task in workers:
        if not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    if late:
        raise TimeoutError(f"starting {len(phones)} took over {deadline:.0f} s")
    started.seconds = time.perf_counter() - begin
    return started


async def wait_for_sms(sms: client.Sms, count: int, timeout: float) -> float:  # noqa: ASYNC109
    """Wait until the fake Twilio has accepted `count` messages; returns the seconds it took."""
    begin = time.perf_counter()
    while (sent := await sms.count()) < count:
        if time.perf_counter() - begin > timeout:
            raise TimeoutError(f"only {sent} of {count} SMS were sent within {timeout:g} s")
        await asyncio.sleep(0.1)
    return time.perf_counter() - begin


async def complete(api: client.Api, sms: client.Sms, phones: list[str], concurrency: int) -> None:
    """Start and approve a verification for each phone (the warm-up)."""
    numbered = iter(phones)

    async def worker() -> None:
        for phone in numbered:
            v = await api.start(phone)
            await api.submit(v.body["id"], await sms.code(phone))

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), 120)


async def measure(options: Options, sqs_server: LocalStack) -> dict[str, Any]:
    o = options
    phones = phone_numbers(WARMUP + o.m + o.expiring)
    warm, waiting_phones, expiring_phones = (
        phones[:WARMUP],
        phones[WARMUP : WARMUP + o.m],
        phones[WARMUP + o.m :],
    )
    async with (
        stack(NAME, sqs_server) as s,
        client.session(o.concurrency) as http,
        OutcomeListener(s.sqs, s.queue.url, receivers=2) as outcomes,
    ):
        sms = client.Sms(http, s.twilio.url)
        first, _ = await s.start_service(LONG_TTL_SECONDS)
        api = client.Api(http, first.url)
        await complete(api, sms, warm, 16)
        await wait_for_sms(sms, WARMUP, 30)
        await asyncio.sleep(1)
        before = first.usage()

        log(f"starting {o.m:,} verifications at concurrency {o.concurrency}")
        big = await start_all(api, waiting_phones, o.concurrency)
        log(f"{len(big.ids):,} started in {big.seconds:.1f} s; waiting for their SMS")
        sms_seconds = await wait_for_sms(sms, WARMUP + len(big.ids), 120 + o.m / 100)
        await asyncio.sleep(2)
        after = first.usage()
        rss_per_pending = (after.rss_bytes - before.rss_bytes) / len(big.ids)
        log(
            f"RSS {before.rss_bytes / 2**20:.0f} -> {after.rss_bytes / 2**20:.0f} MiB;"
            f" measuring idle CPU for {o.idle_seconds:g} s"
        )
        idle_begin = first.usage().cpu_seconds
        await asyncio.sleep(o.idle_seconds)
        idle_cpu = first.usage().cpu_seconds - idle_begin
        stop_begin = time.perf_counter()
        await first.stop()
        stop_seconds = time.perf_counter() - stop_begin

        second, second_health = await s.start_service(LONG_TTL_SECONDS)
        second_recovered, _ = await second.wait_log("recovered:", 10)
        api = client.Api(http, second.url)
        expiring = await start_all(api, expiring_phones, min(o.concurrency, 64))
        await wait_for_sms(sms, WARMUP + len(big.ids) + len(expiring.ids), 60)
        await second.kill()
        killed_at = time.time()
        last_deadline = _expire_soon(second, expiring.ids, killed_at + o.expiring_in)
        await asyncio.sleep(max(0.0, last_deadline - time.time()) + 0.5)
        outage = time.time() - killed_at
        log(f"service #2 SIGKILLed; restarting after {outage:.1f} s, past every deadline")

        third = s.new_service(LONG_TTL_SECONDS)
        starting = asyncio.create_task(third.start(120))
        restart_profile = None
        try:
            await asyncio.wait_for(third.spawned.wait(), 30)
            if o.profile:
                raw = RESULTS / "restart-profile.txt"
                async with profiler.Profiler(third.pid, {"raw": raw}):
                    recovered_seconds, line = await third.wait_log("recovered:", 60)
                    recovered_cpu = third.usage().cpu_seconds
                    await asyncio.wait_for(asyncio.shield(starting), 120)
                restart_profile = {
                    "about": (
                        f"service #3 from its spawn until it answered /healthz, recovering"
                        f" {len(big.ids):,} pending verifications (timings of that run include"
                        f" the profiler)"
                    ),
                    **profiler.summarise(raw),
                }
            else:
                recovered_seconds, line = await third.wait_log("recovered:", 60)
                recovered_cpu = third.usage().cpu_seconds
            health_seconds = await starting
        finally:
            # A failed wait must not leave the start behind, its failure unread.
            if not starting.done():
                starting.cancel()
        log(f"{third.name} (pid {third.pid}) answers after {health_seconds:.2f} s")
        await asyncio.sleep(1)
        restarted = third.usage()
        counts = _recovered_counts(line["message"])

        api = client.Api(http, third.url)
        sample = random.Random(0).sample(range(len(big.ids)), min(o.sample, len(big.ids)))
        approved, approve_latency = await approve(api, sms, big, sample)
        expired = await read_status(api, expiring.ids)
        wanted = set(expiring.ids) | {big.ids[i] for i in sample}
        await outcomes.settle(wanted, quiet_seconds=2.0, timeout=30)
        on_queue = {i: outcomes.first[i].event["status"] for i in wanted if i in outcomes.first}
    queue_ok = (
        sum(on_queue.get(i) == "expired" for i in expiring.ids),
        sum(on_queue.get(big.ids[i]) == "approved" for i in sample),
    )
    results: dict[str, Any] = {
        "parameters": {
            **dataclasses.asdict(o),
            "warmup": WARMUP,
            "long_ttl_seconds": LONG_TTL_SECONDS,
        },
        "start": {
            "started": len(big.ids),
            "failed": len(big.failures),
            "seconds": round(big.seconds, 1),
            "per_second": round(len(big.ids) / big.seconds, 1),
            "latency_ms": stats.summary_ms(big.latencies),
            "sms_drained_seconds_after_last_start": round(sms_seconds, 1),
        },
        "memory": {
            "rss_before_mib": round(before.rss_bytes / 2**20, 1),
            "rss_after_mib": round(after.rss_bytes / 2**20, 1),
            "rss_bytes_per_pending": round(rss_per_pending),
            "rss_after_restart_mib": round(restarted.rss_bytes / 2**20, 1),
        },
        "idle": {
            "seconds": o.idle_seconds,
            "cpu_seconds": round(idle_cpu, 3),
            "percent_of_a_core": round(100 * idle_cpu / o.idle_seconds, 2),
        },
        "graceful_restart": {
            "stop_seconds": round(stop_seconds, 2),
            "healthz_seconds": round(second_health, 2),
            "recovered_log_seconds": round(second_recovered, 2),
        },
        "crash_restart": {
            "outage_seconds": round(outage, 1),
            "healthz_seconds": round(health_seconds, 2),
            "recovered_log_seconds": round(recovered_seconds, 2),
            "cpu_seconds_until_recovered": round(recovered_cpu, 2),
            "log": line["message"],
            **counts,
            "expected_resumed": len(big.ids),
            "expected_expired": len(expiring.ids),
        },
        "profile": restart_profile,
        "after_restart": {
            "sample": len(sample),
            "approved": approved,
            "approve_ms": stats.summary_ms(approve_latency),
            "expiring": len(expiring.ids),
            "read_expired": expired,
            "expired_outcomes_on_queue": queue_ok[0],
            "approved_outcomes_on_queue": queue_ok[1],
        },
    }
    results["targets"] = targets(results, o)
    return results


async def approve(
    api: client.Api, sms: client.Sms, started: Started, sample: list[int]
) -> tuple[int, list[float]]:
    """Submit, for each sampled verification, the code its SMS carried before the crash."""
    latencies: list[float] = []

    async def one(i: int) -> bool:
        code = await sms.code(started.phones[i], 10)
        r = await api.submit(started.ids[i], code)
        latencies.append(r.seconds)
        return bool(r.body["status"] == "approved")

    results = await asyncio.wait_for(
        asyncio.gather(*(one(i) for i in sample), return_exceptions=True), 60
    )
    for r in results:
        if isinstance(r, BaseException):
            log(f"approving after the restart failed: {r!r}")
    return sum(r is True for r in results), latencies


async def read_status(api: client.Api, ids: list[str]) -> int:
    """How many of `ids` read `expired`."""
    views = await asyncio.wait_for(asyncio.gather(*(api.get(i) for i in ids)), 60)
    return sum(v.body["status"] == "expired" for v in views)


def slot(result: dict[str, Any]) -> str:
    return STRETCH if result["results"]["start"]["started"] >= STRETCH_M else NAME


def targets(r: dict[str, Any], o: Options) -> list[dict[str, Any]]:
    per = r["memory"]["rss_bytes_per_pending"]
    idle = r["idle"]["percent_of_a_core"]
    crash = r["crash_restart"]
    ready = max(crash["healthz_seconds"], crash["recovered_log_seconds"])
    started = r["start"]["started"]
    whole = (
        crash["resumed"] == crash["expected_resumed"]
        and crash["expired"] == crash["expected_expired"]
        and r["after_restart"]["approved"] == r["after_restart"]["sample"]
        and r["after_restart"]["read_expired"] == r["after_restart"]["expiring"]
    )
    return [
        {
            "target": "≤ 4 KB RSS per pending verification",
            "measured": f"{per / KB:.2f} KB ({per:,} bytes)",
            # Over fewer, the fixed costs of the process swamp the share of each verification.
            "met": per <= 4 * KB if started >= 100_000 else None,
        },
        {
            "target": "1,000,000 pending in one process",
            "measured": f"{started:,} pending",
            "met": True if started >= STRETCH_M else None,
        },
        {
            "target": f"< 2% of a core while {started:,} wait idle",
            "measured": f"{idle}% of a core",
            "met": idle < 2 if started >= 100_000 else None,
        },
        {
            "target": f"{started:,} pending re-armed and answering within 3 s of restart",
            "measured": f"{ready} s (healthz {crash['healthz_seconds']} s,"
            f" recovered log {crash['recovered_log_seconds']} s)",
            "met": ready < 3 if started >= 100_000 else None,
        },
        {
            "target": "after the crash: all resumed, the overdue expired, sample approved",
            "measured": f"{crash['resumed']:,}/{crash['expected_resumed']:,} resumed,"
            f" {crash['expired']}/{crash['expected_expired']} expired,"
            f" {r['after_restart']['approved']}/{r['after_restart']['sample']} approved",
            "met": whole,
        },
    ]


def render(result: dict[str, Any]) -> str:
    r = result["results"]
    s, mem, idle, crash = r["start"], r["memory"], r["idle"], r["crash_restart"]
    graceful, after = r["graceful_restart"], r["after_restart"]
    rows = [
        ["pending verifications", s["started"]],
        [
            "starting them",
            f"{s['seconds']} s, {s['per_second']:,}/s at concurrency"
            f" {r['parameters']['concurrency']}, {s['failed']} failed",
        ],
        ["start latency p50 / p99", f"{s['latency_ms']['p50']} / {s['latency_ms']['p99']} ms"],
        ["SMS all out after the last start", f"{s['sms_drained_seconds_after_last_start']} s"],
        ["service RSS before → after", f"{mem['rss_before_mib']} → {mem['rss_after_mib']} MiB"],
        ["RSS per pending verification", f"{mem['rss_bytes_per_pending']:,} bytes"],
        [
            f"idle CPU over {idle['seconds']:g} s",
            f"{idle['cpu_seconds']} s = {idle['percent_of_a_core']}% of a core",
        ],
        ["graceful stop (SIGTERM)", f"{graceful['stop_seconds']} s"],
        [
            "restart after it: /healthz, recovered log",
            f"{graceful['healthz_seconds']} s, {graceful['recovered_log_seconds']} s",
        ],
        ["outage after SIGKILL", f"{crash['outage_seconds']} s"],
        ["restart after SIGKILL: /healthz", f"{crash['healthz_seconds']} s from spawn"],
        ["restart after SIGKILL: recovered log", f"{crash['recovered_log_seconds']} s from spawn"],
        ["CPU from spawn until recovered", f"{crash['cpu_seconds_until_recovered']} s"],
        ["recovery log", f"`{crash['log']}`"],
        ["RSS after the restart", f"{mem['rss_after_restart_mib']} MiB"],
        [
            "sample approved with pre-crash codes",
            f"{after['approved']} / {after['sample']} (p50 {after['approve_ms']['p50']} ms)",
        ],
        [
            "expired during the outage, read `expired`",
            f"{after['read_expired']} / {after['expiring']}",
        ],
        [
            "their outcomes on the queue",
            f"{after['expired_outcomes_on_queue']} expired,"
            f" {after['approved_outcomes_on_queue']} approved",
        ],
    ]
    text = stats.table(["measure", "value"], rows) + "\n\n" + report.targets_table(r["targets"])
    return text


def _recovered_counts(message: str) -> dict[str, int]:
    found = RECOVERED.search(message)
    if found is None:
        return {"resumed": -1, "resent": -1, "expired": -1}
    resumed, resent, expired = map(int, found.groups())
    return {"resumed": resumed, "resent": resent, "expired": expired}


def _expire_soon(service: Service, ids: list[str], at: float) -> float:
    """Bring the deadlines of `ids` to `at` in the killed service's database; the latest."""
    with sqlite3.connect(service.env["VERIFY_DATABASE_PATH"]) as db:
        db.executemany(
            "UPDATE verifications SET expires_at = ? WHERE id = ?", [(at, i) for i in ids]
        )
    db.close()
    return at
