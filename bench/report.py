"""Results: one JSON file per benchmark in bench/results/, and the tables in BENCHMARKS.md.

BENCHMARKS.md is written by hand except between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`,
which `python -m bench report` (and every benchmark run) fills from the latest JSON results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import profiler, stats
from bench.stack import RESULTS, ROOT

MARKDOWN = ROOT / "BENCHMARKS.md"
Renderer = Callable[[dict[str, Any]], str]


def record(
    name: str, command: str, machine: dict[str, Any], results: dict[str, Any]
) -> dict[str, Any]:
    """The whole result: what ran, where, when, and what it measured."""
    return {
        "benchmark": name,
        "command": command,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine,
        "results": results,
    }


def save(result: dict[str, Any], slot: str | None = None) -> Path:
    """Write the result as the latest of its benchmark (or `slot`), and a dated copy in history/.

    A profile, if the run took one, is also kept in profiles.json, so it outlives later runs
    without a profiler.
    """
    name, stamp = slot or result["benchmark"], result["finished_at"].replace(":", "")
    (RESULTS / "history").mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2) + "\n"
    (RESULTS / "history" / f"{name}-{stamp}.json").write_text(text)
    path = RESULTS / f"{name}.json"
    path.write_text(text)
    profile = result["results"].get("profile")
    if profile:
        profiles = load("profiles") or {}
        profiles[name] = {k: result[k] for k in ("command", "finished_at")} | {
            "commit": result["machine"].get("commit"),
            "profile": profile,
        }
        (RESULTS / "profiles.json").write_text(json.dumps(profiles, indent=2) + "\n")
    return path


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def section(result: dict[str, Any], render: Renderer) -> str:
    m = result["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items())
    return "\n".join(
        [
            f"Command: `{result['command']}` — finished {result['finished_at']}, commit"
            f" {m.get('commit')}.",
            "",
            f"Machine: {m['cores']} cores ({m['cpu']}), {m['memory_gb']} GB, Linux {m['kernel']},"
            f" Python {m['python']}, SQLite {m['sqlite']}, LocalStack {m['localstack']};"
            f" {packages}."
            f" Load average at the start: {' / '.join(map(str, m['load_average']))}.",
            "",
            render(result),
        ]
    )


def update_markdown(renderers: dict[str, Renderer]) -> list[str]:
    """Refill each benchmark's marked block in BENCHMARKS.md; returns the names refilled."""
    if not MARKDOWN.exists():
        return []
    text = MARKDOWN.read_text()
    done = []
    results = {name: load(name) for name in renderers}
    blocks = {name: section(r, renderers[name]) for name, r in results.items() if r is not None}
    blocks["summary"] = summary({name: r for name, r in results.items() if r is not None})
    profiles = load("profiles")
    if profiles:
        blocks["profiles"] = "\n\n".join(profile_section(p) for p in profiles.values())
    for name, body in blocks.items():
        pattern = re.compile(rf"(<!-- bench:{name} -->\n)(?:.*?\n)?(<!-- /bench:{name} -->)", re.S)
        if pattern.search(text):
            text = _fill(pattern, text, body)
            done.append(name)
    MARKDOWN.write_text(text)
    return done


def summary(results: dict[str, dict[str, Any]]) -> str:
    """Every target against the latest measurement, from whichever results there are."""
    rows = [
        [name, t["target"], t["measured"], stats.verdict(t["met"]), r["finished_at"][:10]]
        for name, r in results.items()
        for t in r["results"].get("targets", [])
    ]
    return stats.table(["benchmark", "target", "measured", "verdict", "measured on"], rows)


def profile_section(entry: dict[str, Any]) -> str:
    profile = entry["profile"]
    return (
        f"py-spy `--gil`, {profile['samples']} samples: {profile['about']}. Command:"
        f" `{entry['command']}`, {entry['finished_at']}, commit {entry['commit']}.\n\n"
        + profiler.table(profile)
        + _half_load(profile)
    )


def _half_load(profile: dict[str, Any]) -> str:
    half = profile.get("half_load")
    if not half or "ms_by_package" not in profile:
        return ""
    return (
        f"\n\nThe same at half load ({half['run']['offered_per_second']}/s, py-spy attached),"
        " per verification, by package of the function on top:\n\n"
        + profiler.compared(profile["ms_by_package"], half["ms_by_package"])
    )


def _fill(pattern: re.Pattern[str], text: str, body: str) -> str:
    return pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)


def targets_table(rows: list[dict[str, Any]]) -> str:
    return stats.table(
        ["target", "measured", "verdict"],
        [[t["target"], t["measured"], stats.verdict(t["met"])] for t in rows],
    )
