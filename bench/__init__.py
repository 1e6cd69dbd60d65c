"""Benchmarks: the real service in its own process, driven over HTTP from this one.

`python -m bench` runs all three (throughput, waiting, push_vs_poll); `python -m bench --help` says
how to run one and scale it. Results go to `bench/results/` as JSON; `python -m bench report`
rewrites the tables in BENCHMARKS.md from them.
"""
