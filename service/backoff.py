"""Back-off: the waits between tries, kept in a list (as tutorcruncher/morpheus does).

One helper for every retry loop of the service: the store's, the publisher's, the queue's look-up.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence


def delays(steps: Sequence[float]) -> Iterator[float]:
    """The waits of `steps` in order, then the last one for ever."""
    if not steps:
        raise ValueError("A back-off needs at least one delay.")
    yield from steps
    while True:
        yield steps[-1]
