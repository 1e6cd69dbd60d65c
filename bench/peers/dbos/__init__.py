"""The verification service written on DBOS Transact, as that library's users would write it.

`python -m bench.peers.dbos` serves the part of the `/verifications` contract the benchmark
driver uses, from the same VERIFY_* environment as `python -m service`. See README.md here for
what it does, what it leaves out, and how it is tuned.
"""
