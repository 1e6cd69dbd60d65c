"""Benchmark 5, at scale: requests among M pending, a restart with M pending, a stop with M pending.

Starting a million through the API takes half an hour here, so they are written straight into
the service's database instead, as if started over the last hours (SMS sent, deadlines spread
over the next hours), by the service's own schema and code secret. Then:

1. the service is spawned on them: the seconds from spawn until `/healthz`, a read, a right code,
   a cancel and a start for a seeded number (each one whose deadline is last, so recovery
   reaches it last) are answered, and until the log says all are armed;
2. a cohort of `expiring` seeded verifications has deadlines falling while recovery runs: each
   must end `expired` at its deadline, its outcome on the queue at most a second after it, and a
   right code sent after its deadline must be refused;
3. a steady paced load, `rate` whole verifications a second (start, the code read from the fake
   Twilio, the code submitted) for `seconds`, while the M wait: latency of each request;
4. SIGTERM: the seconds until the process has exited.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import client, machine, profiler, report, stats
from bench.outcomes import OutcomeListener
from bench.phones import phone_numbers
from bench.stack import API_KEY, RESULTS, LocalStack, Service, log, stack
from service.api.credentials import ApiKeys
from service.codes import CodeBook
from service.store.sqlite.schema import open_writer
from service.store.sqlite.store import COLUMNS

NAME = "scale"
#: Where a run of a million or more is kept, so the regular run does not overwrite it.
STRETCH = "scale_stretch"
STRETCH_M = 1_000_000
LONG_TTL_SECONDS = 6 * 3600.0
SECRET = bytes(range(32))
CODE_LENGTH = 6
#: Rows written per transaction while seeding.
SEED_BATCH = 50_000
#: Seeded verifications whose deadline is last: the probes after the restart.
PROBES = 4
KB = 1024


@dataclass(frozen=True)
class Options:
    m: int = 100_000
    #: Seeded verifications whose deadlines fall during recovery.
    expiring: int = 200
    #: Whole verifications a second while the M wait; None: half the saturated rate that
    #: `python -m bench throughput` measured last on this machine (else `DEFAULT_RATE`).
    rate: float | None = None
    seconds: float = 30.0
    #: Attach py-spy to the service during the paced load (its latencies then suffer).
    profile: bool = False


@dataclass
class Seeded:
    ids: list[str]
    phones: list[str]
    salts: list[bytes]
    #: Indexes of the expiring cohort, and of the probes (the latest deadlines).
    expiring: range
    probes: list[int]


@dataclass
class Paced:
    start: list[float] = field(default_factory=list)
    submit: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    completed: int = 0
    seconds: float = 0.0


#: The paced rate where throughput has not been measured on this machine.
DEFAULT_RATE = 150.0


async def measure(options: Options, sqs_server: LocalStack) -> dict[str, Any]:
    o = options if options.rate is not None else dataclasses.replace(options, rate=half_rate())
    assert o.rate is not None
    phones = phone_numbers(o.m + o.expiring + int(o.rate * o.seconds) + 100)
    async with stack(NAME, sqs_server) as s, client.session(256) as http:
        first = _service(s.new_service(LONG_TTL_SECONDS))
        await first.start(60)
        baseline_rss = first.usage().rss_bytes
        await first.stop()
        db_path = Path(first.env["VERIFY_DATABASE_PATH"])
        seeded = await asyncio.to_thread(_seed, db_path, phones[: o.m + o.expiring], o.expiring)
        log(f"seeded {len(seeded.ids):,} pending verifications")
        async with OutcomeListener(s.sqs, s.queue.url, receivers=2) as outcomes:
            service = _service(s.new_service(LONG_TTL_SECONDS))
            deadlines = _expire_soon(db_path, seeded, first_in=1.5, spread=2.0)
            restart = await _restart(service, http, seeded, phones[o.m + o.expiring])
            expiry = await _expiry(service, http, outcomes, seeded, deadlines)
            recovered_seconds, line = await service.wait_log("recovered:", 120)
            armed = service.usage()
            await asyncio.sleep(1)
            rss = service.usage().rss_bytes
            log(f"paced load: {o.rate:g}/s for {o.seconds:g} s among {o.m:,} pending")
            cpu_before = service.usage().cpu_seconds
            load = _paced(service, http, s.twilio.url, phones[o.m + o.expiring + 1 :], o)
            profile = None
            if o.profile:
                raw = RESULTS / "scale-profile.txt"
                async with profiler.Profiler(service.pid, {"raw": raw}):
                    paced = await load
                profile = {
                    "about": f"the service during the paced load among {o.m:,} pending",
                    **profiler.summarise(raw),
                }
            else:
                paced = await load
            cpu = service.usage().cpu_seconds - cpu_before
            stop_seconds = await _stop(service)
            expiry |= _outbox_lateness(db_path, seeded, deadlines)
    results = {
        "parameters": dataclasses.asdict(o),
        "restart": {**restart, "recovered_log_seconds": round(recovered_seconds, 2)},
        "recovery_log": line["message"],
        "recovery_cpu": {
            "seconds": round(armed.cpu_seconds, 2),
            "kernel_seconds": round(armed.kernel_seconds, 2),
            "page_faults": armed.page_faults,
        },
        "expiry": expiry,
        "memory": {
            "rss_baseline_mib": round(baseline_rss / 2**20, 1),
            "rss_mib": round(rss / 2**20, 1),
            "rss_bytes_per_pending": round((rss - baseline_rss) / len(seeded.ids)),
        },
        "paced": {
            "offered_per_second": o.rate,
            "completed": paced.completed,
            "failed": len(paced.failures),
            "failures": paced.failures[:5],
            "start_ms": stats.summary_ms(paced.start),
            "submit_ms": stats.summary_ms(paced.submit),
            "service_cpu_ms_per_verification": round(1000 * cpu / max(1, paced.completed), 3),
        },
        "sigterm_seconds": round(stop_seconds, 2),
        "profile": profile,
    }
    results["targets"] = targets(results)
    return results


async def measure_stretch(options: Options, sqs_server: LocalStack) -> dict[str, Any]:
    """The same at a million at least: what `python -m bench` runs after the 100,000."""
    return await measure(dataclasses.replace(options, m=max(options.m, STRETCH_M)), sqs_server)


def half_rate() -> float:
    """Half the saturated rate of the last throughput run here: the targets' "half load"."""
    last = report.load("throughput")
    if last is None or last["machine"]["cpu"] != machine.describe()["cpu"]:
        log(f"no throughput measured on this machine: pacing at {DEFAULT_RATE:g}/s")
        return DEFAULT_RATE
    saturated = float(last["results"]["runs"][0]["completed_per_second"])
    log(f"pacing at half the saturated {saturated:g}/s measured {last['finished_at']}")
    return round(saturated / 2, 1)


def _service(service: Service) -> Service:
    service.env["VERIFY_DATABASE_SECRET"] = SECRET.hex()
    service.env["VERIFY_VERIFICATION_CODE_LENGTH"] = str(CODE_LENGTH)
    return service


def _seed(path: Path, phones: list[str], expiring: int) -> Seeded:
    """Write a pending verification for each phone: SMS sent, deadline hours away."""
    rng = random.Random(0)
    owner = ApiKeys((API_KEY,)).fingerprint(API_KEY)  # type: ignore[arg-type]
    assert owner is not None
    now = time.time()
    ids = [f"VE{rng.getrandbits(128):032x}" for _ in phones]
    salts = [rng.randbytes(16) for _ in phones]
    db = open_writer(str(path), "OFF", 5000)
    try:
        marks = ", ".join("?" * len(COLUMNS.split(",")))
        insert = f"INSERT INTO verifications ({COLUMNS}) VALUES ({marks})"
        for begin in range(0, len(phones), SEED_BATCH):
            rows = []
            for i in range(begin, min(begin + SEED_BATCH, len(phones))):
                created = now - rng.uniform(60, 3600)
                # Spread over the TTL to come, the last ones last, so the probes come last.
                expires = now + 600 + (LONG_TTL_SECONDS - 1200) * i / len(phones)
                head = (ids[i], phones[i], None, "pending", salts[i], 3, 0, created, expires)
                tail = (None, created + 1, f"SM{i:032x}", None, owner, "", CODE_LENGTH, "")
                rows.append((*head, *tail))
            db.execute("BEGIN")
            db.executemany(insert, rows)
            db.execute("COMMIT")
    finally:
        db.close()
    total = len(phones)
    # The expiring cohort is the first rows; the probes are the last.
    probes = list(range(total - PROBES, total))
    return Seeded(ids, phones, salts, range(expiring), probes)


def _expire_soon(path: Path, seeded: Seeded, first_in: float, spread: float) -> list[float]:
    """Bring the cohort's deadlines to `first_in` to `first_in + spread` seconds from now."""
    now = time.time()
    n = len(seeded.expiring)
    deadlines = [now + first_in + spread * k / n for k in range(n)]
    with sqlite3.connect(path) as db:
        db.executemany(
            "UPDATE verifications SET expires_at = ? WHERE id = ?",
            [(deadlines[k], seeded.ids[i]) for k, i in enumerate(seeded.expiring)],
        )
    db.close()
    return deadlines


async def _restart(
    service: Service, http: Any, seeded: Seeded, new_phone: str
) -> dict[str, float | None]:
    """Spawn, then ask as soon as it answers: the seconds from spawn until each is answered."""
    healthz = await service.start(120)
    api = client.Api(http, service.url)
    book = CodeBook(SECRET, CODE_LENGTH)
    read, right, cancel, again = seeded.probes
    since = service.started_at

    async def timed(call: Any) -> float | None:
        try:
            await call
        except client.RequestFailed as exc:
            log(f"a request after the restart failed: {exc}")
            return None
        return round(time.perf_counter() - since, 3)

    answers = await asyncio.gather(
        timed(api.get(seeded.ids[read])),
        timed(_approved(api, seeded.ids[right], book.code(seeded.salts[right]))),
        timed(api.call("DELETE", f"/verifications/{seeded.ids[cancel]}")),
        timed(_same(api, seeded.phones[again], seeded.ids[again])),
        timed(api.start(new_phone)),
    )
    names = ("get", "code", "cancel", "start_for_a_seeded_number", "new_start")
    return {"healthz": round(healthz, 3)} | dict(zip(names, answers, strict=True))


async def _approved(api: client.Api, verification_id: str, code: str) -> None:
    r = await api.submit(verification_id, code)
    if r.body["status"] != "approved":
        raise client.RequestFailed(f"the right code was answered {r.body['status']}")


async def _same(api: client.Api, phone: str, verification_id: str) -> None:
    r = await api.start(phone)
    if r.body["id"] != verification_id:
        raise client.RequestFailed("a start for a seeded number made another verification")


async def _expiry(
    service: Service,
    http: Any,
    outcomes: OutcomeListener,
    seeded: Seeded,
    deadlines: list[float],
) -> dict[str, Any]:
    """Each of the cohort expired at its deadline, its outcome on the queue soon after."""
    api = client.Api(http, service.url)
    book = CodeBook(SECRET, CODE_LENGTH)
    late = seeded.expiring[-1]
    await asyncio.sleep(max(0.0, deadlines[-1] - time.time()) + 0.05)
    refused = await api.call(
        "POST",
        f"/verifications/{seeded.ids[late]}/code",
        {"code": book.code(seeded.salts[late])},
        expect=409,
    )
    lateness, wrong = [], 0
    for k, i in enumerate(seeded.expiring):
        try:
            arrival = await outcomes.wait(seeded.ids[i], 30)
        except TimeoutError:
            wrong += 1
            continue
        event = arrival.event
        if (
            event["status"] != "expired"
            or abs(_seconds(event["completed_at"]) - deadlines[k]) > 1e-3
        ):
            wrong += 1
        lateness.append(arrival.wall - deadlines[k])
    return {
        "cohort": len(seeded.expiring),
        "expired_at_their_deadline": len(seeded.expiring) - wrong,
        "code_after_deadline_refused": refused.body["verification"]["status"] == "expired",
        "outcome_after_deadline_ms": stats.summary_ms(lateness),
    }


def _outbox_lateness(path: Path, seeded: Seeded, deadlines: list[float]) -> dict[str, Any]:
    """By the service's own records: when each expiry was committed, and its outcome sent."""
    deadline = {seeded.ids[i]: deadlines[k] for k, i in enumerate(seeded.expiring)}
    with sqlite3.connect(path) as db:
        rows = db.execute(
            f"SELECT verification_id, created_at, sent_at FROM outbox"
            f" WHERE verification_id IN ({', '.join('?' * len(deadline))})",
            list(deadline),
        ).fetchall()
    db.close()
    decided = [created - deadline[i] for i, created, _ in rows]
    sent = [at - deadline[i] for i, _, at in rows if at is not None]
    return {
        "decided_after_deadline_ms": stats.summary_ms(decided),
        "sent_after_deadline_ms": stats.summary_ms(sent),
    }


def _seconds(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


async def _paced(
    service: Service, http: Any, twilio_url: str, phones: list[str], o: Options
) -> Paced:
    """`o.rate` whole verifications a second, each arriving on schedule, for `o.seconds`."""
    api, sms = client.Api(http, service.url), client.Sms(http, twilio_url)
    paced = Paced()
    rate = o.rate or DEFAULT_RATE
    total = int(rate * o.seconds)

    async def one(phone: str) -> None:
        try:
            started = await api.start(phone)
            paced.start.append(started.seconds)
            submitted = await api.submit(started.body["id"], await sms.code(phone))
            paced.submit.append(submitted.seconds)
            paced.completed += 1
        except Exception as exc:
            paced.failures.append(repr(exc)[:200])

    begin = time.perf_counter()
    tasks = []
    for n in range(total):
        await asyncio.sleep(max(0.0, begin + n / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(one(phones[n])))
    await asyncio.wait_for(asyncio.gather(*tasks), 120)
    paced.seconds = time.perf_counter() - begin
    return paced


async def _stop(service: Service) -> float:
    assert service.process is not None
    begin = time.perf_counter()
    await service.stop(60)
    return time.perf_counter() - begin


def slot(result: dict[str, Any]) -> str:
    return STRETCH if result["results"]["parameters"]["m"] >= STRETCH_M else NAME


def targets(r: dict[str, Any]) -> list[dict[str, Any]]:
    restart, paced, expiry = r["restart"], r["paced"], r["expiry"]
    pending = r["parameters"]["m"]
    answered = [v for k, v in restart.items() if k != "recovered_log_seconds"]
    first = max((v for v in answered if v is not None), default=None)
    late = expiry["sent_after_deadline_ms"]["max"]
    per = r["memory"]["rss_bytes_per_pending"]
    rows = [
        {
            "target": f"with {pending:,} pending, at {paced['offered_per_second']:g}/s:"
            " start and code p99 < 50 ms, max < 200 ms",
            "measured": "start p99 {} max {} ms; code p99 {} max {} ms".format(
                paced["start_ms"]["p99"],
                paced["start_ms"]["max"],
                paced["submit_ms"]["p99"],
                paced["submit_ms"]["max"],
            ),
            "met": _met(paced, 50, 200) and paced["failed"] == 0,
        },
        {
            "target": "restart: /healthz, get, code, cancel, start answered within 1 s of spawn",
            "measured": f"{first} s (healthz {restart['healthz']} s)"
            + ("" if None not in answered else "; one failed"),
            "met": first is not None and None not in answered and first <= 1.0,
        },
        {
            "target": "restart: all re-armed within 10 s",
            "measured": f"{restart['recovered_log_seconds']} s",
            "met": restart["recovered_log_seconds"] <= 10,
        },
        {
            "target": "deadlines during recovery: expired at the deadline, outcome sent ≤ 1 s"
            " after it, a later code refused",
            "measured": f"{expiry['expired_at_their_deadline']}/{expiry['cohort']} expired;"
            f" decided ≤ {expiry['decided_after_deadline_ms']['max']} ms, sent ≤ {late} ms"
            f" after the deadline; code refused: {expiry['code_after_deadline_refused']}",
            "met": expiry["expired_at_their_deadline"] == expiry["cohort"]
            and late is not None
            and late <= 1000
            and expiry["code_after_deadline_refused"],
        },
        {
            "target": "SIGTERM: exit within 1 s",
            "measured": f"{r['sigterm_seconds']} s",
            "met": r["sigterm_seconds"] <= 1.0,
        },
        {
            "target": "RSS per pending ≤ 3.5 KB",
            "measured": f"{per / KB:.2f} KB ({per:,} bytes)",
            "met": per <= 3.5 * KB if pending >= 100_000 else None,
        },
    ]
    return rows


def _met(paced: dict[str, Any], p99: float, top: float) -> bool:
    return all(
        paced[k]["p99"] is not None and paced[k]["p99"] < p99 and paced[k]["max"] < top
        for k in ("start_ms", "submit_ms")
    )


def render(result: dict[str, Any]) -> str:
    r = result["results"]
    restart, paced, expiry, memory = r["restart"], r["paced"], r["expiry"], r["memory"]
    p = r["parameters"]
    rows = [
        ["pending verifications (seeded)", f"{p['m']:,}"],
        *[[f"restart: {k.replace('_', ' ')}, s from spawn", v] for k, v in restart.items()],
        ["recovery log", f"`{r['recovery_log']}`"],
        *_recovery_cpu(r),
        [
            "cohort expiring during recovery",
            f"{expiry['expired_at_their_deadline']}/{expiry['cohort']} expired at their deadline;"
            f" after it, decided p50 / max {_pm(expiry['decided_after_deadline_ms'])}, sent to"
            f" SQS {_pm(expiry['sent_after_deadline_ms'])}, received by the driver"
            f" {_pm(expiry['outcome_after_deadline_ms'])}; a code after it refused:"
            f" {expiry['code_after_deadline_refused']}",
        ],
        [
            "RSS: empty → with them",
            f"{memory['rss_baseline_mib']} → {memory['rss_mib']} MiB,"
            f" {memory['rss_bytes_per_pending']:,} bytes per pending",
        ],
        [
            f"paced load {paced['offered_per_second']:g}/s for {p['seconds']:g} s",
            f"{paced['completed']:,} completed, {paced['failed']} failed;"
            f" {paced['service_cpu_ms_per_verification']} ms service CPU each",
        ],
        ["start latency p50 / p99 / max", _ms(paced["start_ms"])],
        ["code latency p50 / p99 / max", _ms(paced["submit_ms"])],
        ["SIGTERM to exit", f"{r['sigterm_seconds']} s"],
    ]
    return (
        stats.table(["", ""], rows)
        + "\n\n"
        + stats.table(
            ["target", "measured", "verdict"],
            [[t["target"], t["measured"], stats.verdict(t["met"])] for t in r["targets"]],
        )
    )


def _recovery_cpu(r: dict[str, Any]) -> list[list[str]]:
    cpu = r.get("recovery_cpu")  # not in results from before it was measured
    if cpu is None:
        return []
    return [
        [
            "service CPU from spawn to re-armed: all / in the kernel",
            f"{cpu['seconds']} / {cpu['kernel_seconds']} s, {cpu['page_faults']:,} page faults",
        ]
    ]


def _pm(summary: dict[str, Any]) -> str:
    return f"{summary['p50']} / {summary['max']} ms"


def _ms(summary: dict[str, Any]) -> str:
    return f"{summary['p50']} / {summary['p99']} / {summary['max']} ms"
