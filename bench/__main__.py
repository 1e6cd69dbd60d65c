"""`python -m bench [throughput|waiting|push-vs-poll|scale|replicas|report] [options]`; no command
runs all but replicas.

    python -m bench                                   all but replicas, at their default sizes
                                                      (scale at 100,000 and at 1,000,000)
    python -m bench throughput --n 2000 --concurrency 64 [--profile]
    python -m bench throughput --peer dbos --n 1000   ours and the DBOS peer, alternating
    python -m bench waiting --m 100000                (--m 1000000: the stretch goal)
    python -m bench push-vs-poll --k 300 --intervals 1000 200
    python -m bench scale --m 100000 [--rate R]       (--m 1000000: the million, seeded)
    python -m bench replicas --n 1000 --replicas 1 2 3 --kills 10   (needs PostgreSQL's server)
    python -m bench report                            BENCHMARKS.md's tables from bench/results/

LocalStack is started on a free port and stopped at the end, unless LOCALSTACK_ENDPOINT names one.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shlex
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from bench import (
    comparison,
    machine,
    push_vs_poll,
    replicas,
    report,
    scale,
    throughput,
    waiting,
)
from bench.stack import LocalStack, localstack, log

Measure = Callable[[Any, LocalStack], Awaitable[dict[str, Any]]]

BENCHMARKS: dict[str, tuple[Measure, report.Renderer]] = {
    throughput.NAME: (throughput.measure, throughput.render),
    waiting.NAME: (waiting.measure, waiting.render),
    push_vs_poll.NAME: (push_vs_poll.measure, push_vs_poll.render),
    replicas.NAME: (replicas.measure, replicas.render),
    scale.NAME: (scale.measure, scale.render),
    scale.STRETCH: (scale.measure_stretch, scale.render),
    comparison.NAME: (comparison.measure, comparison.render),
}
#: Run only when named, not by `all`: they need PostgreSQL's server.
ON_REQUEST = {replicas.NAME}
#: Every result BENCHMARKS.md shows, by the name it is kept under.
RENDERERS: dict[str, report.Renderer] = {n: r for n, (_, r) in BENCHMARKS.items()} | {
    waiting.STRETCH: waiting.render,
}
#: What a whole run of all three may take before it is stopped, whatever it is doing.
TIME_LIMIT_SECONDS = 45 * 60


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        help=f"seconds before giving up (default {TIME_LIMIT_SECONDS}, more for a large --m)",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("all", help="all three, at their default sizes (the default)")

    t = commands.add_parser("throughput", help=throughput.__doc__.splitlines()[0])
    t.add_argument("--n", type=int, default=throughput.Options.n, help="verifications")
    t.add_argument("--concurrency", type=int, default=throughput.Options.concurrency)
    t.add_argument(
        "--half-n",
        type=int,
        default=throughput.Options.half_n,
        help="verifications in the half-load run (0: skip it)",
    )
    t.add_argument(
        "--half-rate",
        type=float,
        default=throughput.Options.half_rate,
        help="arrivals/s of the half-load run (default: half the saturation rate)",
    )
    t.add_argument("--warmup", type=int, default=throughput.Options.warmup)
    t.add_argument(
        "--receivers",
        type=int,
        default=throughput.Options.receivers,
        help="concurrent SQS long polls",
    )
    t.add_argument("--profile", action="store_true", help="add a run with py-spy attached")
    t.add_argument(
        "--peer",
        choices=["dbos"],
        help="instead: ours and this peer (bench/peers/), alternating, each run as above",
    )
    t.add_argument(
        "--rounds", type=int, default=comparison.Options.rounds, help="with --peer: runs of each"
    )
    t.add_argument(
        "--pending",
        type=int,
        default=comparison.Options.pending,
        help="with --peer: verifications left pending for RSS per pending (0: skip)",
    )

    w = commands.add_parser("waiting", help=waiting.__doc__.splitlines()[0])
    w.add_argument("--m", type=int, default=waiting.Options.m, help="pending verifications")
    w.add_argument("--concurrency", type=int, default=waiting.Options.concurrency)
    w.add_argument(
        "--expiring",
        type=int,
        default=waiting.Options.expiring,
        help="verifications whose deadline passes during the outage",
    )
    w.add_argument(
        "--sample",
        type=int,
        default=waiting.Options.sample,
        help="pending verifications approved after the restart",
    )
    w.add_argument("--idle-seconds", type=float, default=waiting.Options.idle_seconds)
    w.add_argument(
        "--profile", action="store_true", help="py-spy on the restarted service while it recovers"
    )

    p = commands.add_parser("push-vs-poll", help=push_vs_poll.__doc__.splitlines()[0])
    p.add_argument(
        "--k",
        type=int,
        default=push_vs_poll.Options.k,
        help="verifications per way of learning the outcome",
    )
    p.add_argument(
        "--intervals",
        type=int,
        nargs="+",
        default=list(push_vs_poll.Options.intervals),
        help="polling intervals in ms",
    )
    p.add_argument("--concurrency", type=int, default=push_vs_poll.Options.concurrency)
    p.add_argument(
        "--receivers",
        type=int,
        default=push_vs_poll.Options.receivers,
        help="concurrent SQS long polls",
    )

    r = commands.add_parser("replicas", help=replicas.__doc__.splitlines()[0])
    r.add_argument(
        "--n", type=int, default=replicas.Options.n, help="verifications per configuration"
    )
    r.add_argument("--concurrency", type=int, default=replicas.Options.concurrency)
    r.add_argument("--warmup", type=int, default=replicas.Options.warmup)
    r.add_argument("--receivers", type=int, default=replicas.Options.receivers)
    r.add_argument(
        "--replicas",
        type=int,
        nargs="+",
        default=list(replicas.Options.replicas),
        help="PostgreSQL configurations, by number of replicas",
    )
    r.add_argument(
        "--ttl",
        type=float,
        default=replicas.Options.ttl,
        help="verification TTL of the throughput part (seconds)",
    )
    r.add_argument("--kills", type=int, default=replicas.Options.kills, help="0: no failover part")
    r.add_argument(
        "--pending",
        type=int,
        default=replicas.Options.pending,
        help="verifications left pending on the replica killed, for the survivors to adopt",
    )
    r.add_argument(
        "--coded",
        type=int,
        default=replicas.Options.coded,
        help="codes sent to the survivors right after each kill",
    )

    c = commands.add_parser("scale", help=scale.__doc__.splitlines()[0])
    c.add_argument("--m", type=int, default=scale.Options.m, help="pending verifications, seeded")
    c.add_argument("--expiring", type=int, default=scale.Options.expiring)
    c.add_argument(
        "--rate",
        type=float,
        default=scale.Options.rate,
        help="paced whole ones/s (default: half the saturated rate last measured here)",
    )
    c.add_argument("--seconds", type=float, default=scale.Options.seconds)
    c.add_argument("--profile", action="store_true", help="py-spy during the paced load")

    commands.add_parser("report", help="rewrite BENCHMARKS.md's tables from bench/results/")
    return parser.parse_args(argv)


def options_of(name: str, args: argparse.Namespace | None) -> Any:
    """The benchmark's options from its sub-command's flags; its defaults when run from `all`."""
    cls = {
        throughput.NAME: throughput.Options,
        waiting.NAME: waiting.Options,
        push_vs_poll.NAME: push_vs_poll.Options,
        replicas.NAME: replicas.Options,
        scale.NAME: scale.Options,
        scale.STRETCH: scale.Options,
        comparison.NAME: comparison.Options,
    }[name]
    if args is None:
        return cls()
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    for sequence in ("intervals", "replicas"):
        if sequence in given:
            given[sequence] = tuple(given[sequence])
    return cls(**given)


async def run(names: list[str], args: argparse.Namespace | None, command: str) -> None:
    # Driver-side clients reach LocalStack only; these keep botocore from looking for real ones.
    os.environ.update(AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory(prefix="bench-localstack-") as state:
        async with localstack(Path(state)) as sqs_server:
            for name in names:
                measure, render = BENCHMARKS[name]
                log(f"benchmark {name}")
                described = machine.describe()
                results = await measure(options_of(name, args), sqs_server)
                result = report.record(name, command, described, results)
                slots = {
                    waiting.NAME: waiting.slot,
                    scale.NAME: scale.slot,
                    scale.STRETCH: scale.slot,
                }
                slot = slots[name](result) if name in slots else name
                path = report.save(result, slot)
                print(f"\n## {name}\n\n{render(result)}\n", flush=True)
                if results.get("profile"):
                    print(report.profile_section(load_profile(slot)) + "\n", flush=True)
                print(json.dumps(result, separators=(",", ":")), flush=True)
                log(f"wrote {path}")
                refilled = report.update_markdown(RENDERERS)
                if refilled:
                    log(f"BENCHMARKS.md tables refilled: {', '.join(refilled)}")


def load_profile(name: str) -> dict[str, Any]:
    profiles = report.load("profiles")
    assert profiles is not None
    return dict(profiles[name])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = shlex.join(["python", "-m", "bench", *argv])
    if args.command == "report":
        refilled = report.update_markdown(RENDERERS)
        print(f"BENCHMARKS.md tables refilled: {', '.join(refilled) or 'none'}")
        return
    if args.command in (None, "all"):
        names, options = [n for n in BENCHMARKS if n not in ON_REQUEST], None
    else:
        names, options = [args.command.replace("-", "_")], args
        if getattr(args, "peer", None):
            names = [comparison.NAME]
    # Starting pending verifications is the one step that grows a lot with a flag: 700/s here.
    limit = args.time_limit or TIME_LIMIT_SECONDS + getattr(args, "m", 0) / 200
    try:
        # uvloop in the driver too: the load process shares the 2 cores with the service.
        uvloop.run(asyncio.wait_for(run(names, options, command), limit))
    except TimeoutError:
        sys.exit(f"bench: stopped after the time limit of {limit:g} s")
    except KeyboardInterrupt:
        sys.exit("bench: interrupted")


if __name__ == "__main__":
    main()
