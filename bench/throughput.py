"""Benchmark 1, throughput: N whole verifications at concurrency C, end to end.

Each verification is started, its code read from what the fake Twilio received, the code
submitted, and the outcome received from SQS; a worker takes the next one only then. A first run
saturates the service at concurrency C; a second paces arrivals at half the rate the first reached
(or `--half-rate`), where the code-to-queue latency target applies. `--profile` adds a third run
with py-spy attached, so the measured runs are not perturbed by it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

from bench import client, profiler, report, stats
from bench.outcomes import OutcomeListener
from bench.phones import phone_numbers
from bench.resources import thread_cpu, usage
from bench.stack import RESULTS, LocalStack, Service, Stack, log, stack

NAME = "throughput"
WAIT_SECONDS = 30.0
TTL_SECONDS = 600.0


@dataclass(frozen=True)
class Options:
    n: int = 2000
    concurrency: int = 64
    #: Verifications in the half-load run; 0 skips it.
    half_n: int = 1000
    #: Arrivals per second of the half-load run; 0 means half of what the first run reached.
    half_rate: float = 0.0
    warmup: int = 100
    receivers: int = 4
    profile: bool = False


@dataclass
class Run:
    label: str
    approved: set[str] = field(default_factory=set)
    start: list[float] = field(default_factory=list)
    submit: list[float] = field(default_factory=list)
    to_outcome: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: Outcomes that arrived with another status than the submission answered.
    mismatched: int = 0
    completed: int = 0
    seconds: float = 0.0
    service_cpu: float = 0.0
    cpu_by_process: dict[str, float] = field(default_factory=dict)
    #: The service's CPU seconds on its event loop (main) thread, and on all its other threads.
    service_threads: dict[str, float] = field(default_factory=dict)
    #: Of `service_cpu`, the seconds in the kernel: on a virtual machine, where waking a thread
    #: or another process is dear, this is what grows as the load falls.
    service_kernel: float = 0.0
    offered_rate: float | None = None

    def report(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "completed": self.completed,
            "failed": len(self.failures),
            "first_failures": self.failures[:5],
            "seconds": round(self.seconds, 3),
            "offered_per_second": self.offered_rate,
            "completed_per_second": round(self.completed / self.seconds, 1) if self.seconds else 0,
            "start_ms": stats.summary_ms(self.start),
            "submit_ms": stats.summary_ms(self.submit),
            "submit_to_outcome_ms": stats.summary_ms(self.to_outcome),
            "service_cpu_ms_per_verification": (
                round(1000 * self.service_cpu / self.completed, 3) if self.completed else None
            ),
            "cpu_seconds_by_process": {k: round(v, 2) for k, v in self.cpu_by_process.items()},
            "service_cpu_seconds_by_thread": {
                k: round(v, 2) for k, v in self.service_threads.items()
            },
            "service_kernel_cpu_ms_per_verification": (
                round(1000 * self.service_kernel / self.completed, 3) if self.completed else None
            ),
            "mismatched_outcomes": self.mismatched,
        }


class Driver:
    def __init__(
        self,
        s: Stack,
        service: Service,
        api: client.Api,
        sms: client.Sms,
        outcomes: OutcomeListener,
    ) -> None:
        self.stack = s
        self.service = service
        self.api = api
        self.sms = sms
        self.outcomes = outcomes

    async def verify(self, phone: str, run: Run) -> None:
        """One whole verification; its figures go into `run`."""
        started = await self.api.start(phone)
        verification_id = started.body["id"]
        code = await self.sms.code(phone, WAIT_SECONDS)
        submitted_at = time.perf_counter()
        decided = await self.api.submit(verification_id, code)
        if decided.body["status"] != "approved":
            raise client.RequestFailed(f"{verification_id} was {decided.body['status']}")
        run.approved.add(verification_id)
        arrival = await self.outcomes.wait(verification_id, WAIT_SECONDS)
        run.start.append(started.seconds)
        run.submit.append(decided.seconds)
        run.to_outcome.append(arrival.perf - submitted_at)
        run.mismatched += arrival.event["status"] != "approved"
        run.completed += 1

    async def run(
        self, label: str, phones: list[str], concurrency: int, rate: float | None = None
    ) -> Run:
        """Verify every phone with at most `concurrency` at once, arriving at `rate` per second."""
        run = Run(label, offered_rate=round(rate, 1) if rate else None)
        numbered = iter(enumerate(phones))
        begin = time.perf_counter()
        cpu_before = self.stack.cpu_seconds()
        threads_before = thread_cpu(self.service.pid)
        kernel_before = usage(self.service.pid).kernel_seconds

        async def worker() -> None:
            for i, phone in numbered:
                if rate:
                    await asyncio.sleep(max(0.0, begin + i / rate - time.perf_counter()))
                try:
                    await self.verify(phone, run)
                except Exception as exc:
                    run.failures.append(f"{phone}: {exc!r}")

        # Whatever happens, the run ends: a slow service gives fewer completions, not a hang.
        deadline = 60 + len(phones) / (rate or 20)
        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        _, late = await asyncio.wait(workers, timeout=deadline)
        for task in late:
            task.cancel()
        if late:
            run.failures.append(f"run cut short after {deadline:.0f} s")
        run.seconds = time.perf_counter() - begin
        cpu_after = self.stack.cpu_seconds()
        run.cpu_by_process = {k: cpu_after[k] - cpu_before[k] for k in cpu_after if k in cpu_before}
        run.service_cpu = run.cpu_by_process.get("service", 0.0)
        run.service_kernel = usage(self.service.pid).kernel_seconds - kernel_before
        threads = thread_cpu(self.service.pid)
        spent = {t: cpu - threads_before.get(t, 0.0) for t, cpu in threads.items()}
        main = spent.pop(self.service.pid, 0.0)
        run.service_threads = {"event loop": main, "other threads": sum(spent.values())}
        log(
            f"{label}: {run.completed} completed in {run.seconds:.1f} s"
            f" ({run.completed / run.seconds:.0f}/s), {len(run.failures)} failed"
        )
        return run


async def _half_load_profiled(
    driver: Driver, phones: list[str], o: Options, rate: float
) -> dict[str, Any]:
    """The half load again under py-spy: what costs more per verification when the load falls."""
    raw = RESULTS / "profile-half.txt"
    async with profiler.Profiler(driver.service.pid, {"raw": raw}):
        await asyncio.sleep(1)
        run = await driver.run("profiled at half load", phones[: o.half_n], o.concurrency, rate)
    return {"run": run.report(), "ms_by_package": profiler.per_verification(raw, run.completed)}


async def measure(options: Options, sqs_server: LocalStack) -> dict[str, Any]:
    o = options
    # Twice the saturation run: py-spy's share of the samples is then worth reading.
    profile_n = 2 * o.n if o.profile else 0
    phones = phone_numbers(o.warmup + o.n + o.half_n + profile_n + (o.half_n if o.profile else 0))
    async with stack(NAME, sqs_server) as s:
        service, _ = await s.start_service(TTL_SECONDS)
        async with (
            client.session(o.concurrency * 2) as http,
            OutcomeListener(s.sqs, s.queue.url, o.receivers) as outcomes,
        ):
            driver = Driver(
                s, service, client.Api(http, service.url), client.Sms(http, s.twilio.url), outcomes
            )
            taken = o.warmup
            await driver.run("warm-up", phones[:taken], min(o.concurrency, 16))
            runs = [await driver.run("saturation", phones[taken : taken + o.n], o.concurrency)]
            taken += o.n
            if o.half_n:
                reached = runs[0].completed / runs[0].seconds if runs[0].seconds else 1.0
                rate = o.half_rate or max(1.0, reached / 2)
                paced = phones[taken : taken + o.half_n]
                runs.append(await driver.run("half load", paced, o.concurrency, rate))
                taken += o.half_n
            profile = None
            if o.profile:
                svg, raw = RESULTS / "profile.svg", RESULTS / "profile.txt"
                outputs = {"flamegraph": svg, "raw": raw}
                async with profiler.Profiler(service.pid, outputs):
                    await asyncio.sleep(1)  # py-spy settles before the load starts
                    profiled = await driver.run(
                        "profiled", phones[taken : taken + profile_n], o.concurrency
                    )
                profile = {
                    "about": (
                        f"the service under load, {profiled.completed} verifications at"
                        f" concurrency {o.concurrency}"
                        f" ({profiled.completed / profiled.seconds:.0f}/s with py-spy attached);"
                        f" flame graph: `bench/results/profile.svg`"
                    ),
                    "run": profiled.report(),
                    "svg": str(svg.relative_to(RESULTS.parent.parent)),
                    **profiler.summarise(raw),
                    "ms_by_package": profiler.per_verification(raw, profiled.completed),
                }
                if len(runs) > 1:
                    profile["half_load"] = await _half_load_profiled(
                        driver, phones[taken + profile_n :], o, runs[1].offered_rate or 1.0
                    )
            measured = set().union(*(r.approved for r in runs))
            await outcomes.settle(measured, quiet_seconds=3.0, timeout=WAIT_SECONDS)
            lost, duplicated = outcomes.lost_and_duplicated(measured)
    saturation = runs[0].report()
    half = runs[1].report() if len(runs) > 1 else None
    return {
        "parameters": {**dataclasses.asdict(o), "sqs_receivers": o.receivers},
        "runs": [r.report() for r in runs],
        "outcomes": {"approved": len(measured), "lost": lost, "duplicated": duplicated},
        "profile": profile,
        "targets": targets(saturation, half, lost, duplicated),
    }


def targets(
    saturation: dict[str, Any], half: dict[str, Any] | None, lost: int, duplicated: int
) -> list[dict[str, Any]]:
    p99 = half["submit_to_outcome_ms"]["p99"] if half else None
    cpu = saturation["service_cpu_ms_per_verification"]
    rate = saturation["completed_per_second"]
    return [
        {
            "target": "≥ 1,000 completed verifications/s end to end",
            "measured": f"{rate:,.0f}/s",
            "met": rate >= 1000,
        },
        {
            "target": "≤ 1 ms service CPU per verification",
            "measured": f"{cpu} ms" if cpu is not None else None,
            "met": cpu is not None and cpu <= 1,
        },
        {
            "target": "code submission → outcome from queue p99 < 50 ms at half load",
            "measured": f"{p99} ms at {half['offered_per_second']}/s" if half else None,
            "met": p99 < 50 if p99 is not None else None,
        },
        {
            "target": "outcomes lost or duplicated: 0",
            "measured": f"{lost} lost, {duplicated} duplicated",
            "met": lost == duplicated == 0,
        },
    ]


def render(result: dict[str, Any]) -> str:
    r = result["results"]
    rows = []
    for run in r["runs"]:
        for label, key in (
            ("start", "start_ms"),
            ("code submission", "submit_ms"),
            ("submission → outcome from queue", "submit_to_outcome_ms"),
        ):
            s = run[key]
            rows.append([run["label"], label, s["p50"], s["p95"], s["p99"], s["max"]])
    latency = stats.table(["run", "latency (ms)", "p50", "p95", "p99", "max"], rows)
    runs = stats.table(
        [
            "run",
            "offered/s",
            "completed",
            "failed",
            "seconds",
            "completed/s",
            "service CPU ms/verification",
            "of it in the kernel",
            "CPU s: service / Twilio / LocalStack / driver",
            "service CPU s: event loop / other threads",
        ],
        [
            [
                x["label"],
                x["offered_per_second"] or "as fast as possible",
                x["completed"],
                x["failed"],
                x["seconds"],
                x["completed_per_second"],
                x["service_cpu_ms_per_verification"],
                x.get("service_kernel_cpu_ms_per_verification", "-"),
                " / ".join(
                    str(x["cpu_seconds_by_process"].get(k, "-"))
                    for k in ("service", "fake_twilio", "localstack", "driver")
                ),
                " / ".join(
                    str(x["service_cpu_seconds_by_thread"].get(k, "-"))
                    for k in ("event loop", "other threads")
                ),
            ]
            for x in r["runs"]
        ],
    )
    o = r["outcomes"]
    parts = [
        runs,
        "",
        latency,
        "",
        f"Outcomes: {o['approved']} approved, {o['lost']} lost, {o['duplicated']} duplicated.",
        "",
        report.targets_table(r["targets"]),
    ]
    return "\n".join(parts)
