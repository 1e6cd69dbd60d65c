"""Benchmark 3, push versus poll: how soon, and for how many requests, a client learns an outcome.

For each way of learning it (polling `GET /verifications/{id}` every P ms, long-polling the SQS
queue, or a webhook receiver verifying each signed POST), K verifications are started, and once
the code has arrived the client submits it after a random pause, so decisions fall at random
phases of the polling. Latency runs from the decision (`completed_at` in the final view or the
outcome event, millisecond resolution) to the moment the client holds the outcome (for the
webhook: verified). Requests count what it took to learn the outcome: GETs for polling; receive
and delete calls (shared by the batch they returned) for the queue; POSTs for the webhook. Every
channel runs throughout (SQS and the webhook push every outcome whichever way is measured), so
each way is measured under the same load.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bench import client, stats
from bench.outcomes import OutcomeListener
from bench.phones import phone_numbers
from bench.stack import RESULTS, ROOT, LocalStack, log, stack
from bench.webhooks import WebhookListener

NAME = "push_vs_poll"
TTL_SECONDS = 600.0
WAIT_SECONDS = 30.0
PLOT = RESULTS / "push_vs_poll.png"
COMMITTED_PLOT = ROOT / "bench" / "push_vs_poll.png"


@dataclass(frozen=True)
class Options:
    k: int = 300
    intervals: tuple[int, ...] = (1000, 200)
    concurrency: int = 50
    receivers: int = 2
    #: Seconds between the code's arrival and its submission: uniform in this range.
    pause: tuple[float, float] = (0.1, 1.5)


@dataclass
class Way:
    label: str
    latencies: list[float] = field(default_factory=list)
    requests: int = 0
    failures: list[str] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        n = len(self.latencies)
        return {
            "way": self.label,
            "verifications": n,
            "failed": len(self.failures),
            "first_failures": self.failures[:5],
            "latency_ms": stats.summary_ms(self.latencies),
            "requests_per_verification": round(self.requests / n, 2) if n else None,
            "latencies_ms": [round(x * 1000, 2) for x in self.latencies],
        }


async def measure(options: Options, sqs_server: LocalStack) -> dict[str, Any]:
    o = options
    queue, webhook = "queue (SQS long poll)", "webhook (signed POST, verified)"
    ways = [f"poll every {p} ms" for p in o.intervals] + [queue, webhook]
    phones = phone_numbers(o.k * len(ways))
    results = []
    async with stack(NAME, sqs_server) as s, WebhookListener() as hooks:
        service = s.new_service(TTL_SECONDS)
        service.env |= hooks.env
        await service.start(120.0)
        async with (
            client.session(o.concurrency * 2) as http,
            OutcomeListener(s.sqs, s.queue.url, o.receivers) as outcomes,
        ):
            api, sms = client.Api(http, service.url), client.Sms(http, s.twilio.url)
            rng = random.Random(0)
            for n, label in enumerate(ways):
                interval = o.intervals[n] / 1000 if n < len(o.intervals) else None
                way = Way(label)
                mine = phones[n * o.k : (n + 1) * o.k]
                receipts_before = outcomes.requests
                posts_before = hooks.requests
                await outcomes.settle(set(), 0.5, 1)

                async def one(
                    phone: str, way: Way = way, interval: float | None = interval
                ) -> None:
                    started = await api.start(phone)
                    verification_id = started.body["id"]
                    code = await sms.code(phone, WAIT_SECONDS)
                    pause = rng.uniform(*o.pause)
                    if interval is None:
                        await asyncio.sleep(pause)
                        await api.submit(verification_id, code)
                        listener = hooks if way.label == webhook else outcomes
                        arrival = await listener.wait(verification_id, WAIT_SECONDS)
                        decided = _unix(arrival.event["completed_at"])
                        way.latencies.append(arrival.wall - decided)
                        return
                    watcher = asyncio.create_task(poll(api, verification_id, interval))
                    await asyncio.sleep(pause)
                    await api.submit(verification_id, code)
                    known_at, view, gets = await asyncio.wait_for(watcher, WAIT_SECONDS)
                    way.latencies.append(known_at - _unix(view["completed_at"]))
                    way.requests += gets

                await run_all(mine, one, o.concurrency, way)
                if way.label == queue:
                    way.requests = outcomes.requests - receipts_before
                elif way.label == webhook:
                    way.requests = hooks.requests - posts_before
                results.append(way.report())
                log(
                    f"{label}: p50 {results[-1]['latency_ms']['p50']} ms,"
                    f" {results[-1]['requests_per_verification']} requests per verification"
                )
    plotted = plot(results)
    return {
        "parameters": {**dataclasses.asdict(o), "sqs_receivers": o.receivers},
        "ways": results,
        "plot": str(plotted.relative_to(ROOT)) if plotted else None,
    }


async def poll(
    api: client.Api, verification_id: str, interval: float
) -> tuple[float, dict[str, Any], int]:
    """GET every `interval` seconds until the status is final: when it was seen, the view, GETs."""
    gets = 0
    next_at = time.perf_counter()
    while True:
        gets += 1
        r = await api.get(verification_id)
        if r.body["status"] != "pending":
            return r.at, r.body, gets
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))


async def run_all(phones: list[str], one: Any, concurrency: int, way: Way) -> None:
    numbered = iter(phones)

    async def worker() -> None:
        for phone in numbered:
            try:
                await one(phone)
            except Exception as exc:
                way.failures.append(f"{phone}: {exc!r}")

    deadline = 60 + len(phones) * 3 / concurrency + 30
    workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
    _, late = await asyncio.wait(workers, timeout=deadline)
    for task in late:
        task.cancel()
    if late:
        way.failures.append(f"cut short after {deadline:.0f} s")


def plot(ways: list[dict[str, Any]]) -> Any:
    """CDFs of the latencies, to bench/results/ and copied beside this module to be committed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed: no plot (.venv/bin/pip install matplotlib)")
        return None
    figure, axes = plt.subplots(figsize=(8, 5.5), dpi=120)
    for way in ways:
        values = sorted(max(v, 0.1) for v in way["latencies_ms"])
        if not values:
            continue
        fractions = [(i + 1) / len(values) for i in range(len(values))]
        label = (
            f"{way['way']}: p50 {way['latency_ms']['p50']:.0f} ms,"
            f" {way['requests_per_verification']} requests/verification"
        )
        axes.step(values, fractions, where="post", label=label)
    axes.set_xscale("log")
    axes.set_xlabel("decision → client knows the outcome (ms, log scale)")
    axes.set_ylabel("fraction of verifications")
    axes.set_title("Learning a verification's outcome: polling the API vs SQS vs a webhook")
    axes.grid(True, which="both", alpha=0.3)
    # Below the axes: inside, it would hide the slowest curve's tail.
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=8)
    figure.tight_layout()
    RESULTS.mkdir(parents=True, exist_ok=True)
    figure.savefig(PLOT)
    plt.close(figure)
    shutil.copyfile(PLOT, COMMITTED_PLOT)
    return PLOT


def render(result: dict[str, Any]) -> str:
    r = result["results"]
    rows = [
        [
            w["way"],
            w["verifications"],
            w["failed"],
            w["latency_ms"]["p50"],
            w["latency_ms"]["p95"],
            w["latency_ms"]["p99"],
            w["latency_ms"]["max"],
            w["requests_per_verification"],
        ]
        for w in r["ways"]
    ]
    table = stats.table(
        [
            "way",
            "verifications",
            "failed",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "requests/verification",
        ],
        rows,
    )
    return table + "\n\n![latency CDFs](bench/push_vs_poll.png)"


def _unix(rfc3339: str) -> float:
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
