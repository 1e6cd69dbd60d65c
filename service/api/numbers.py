"""The pending verification of each number, and the times its code was sent, kept in memory.

Twilio's clients name a verification by its number as often as by its SID (a check `To=`, a fetch
of `/Verifications/+1415...`), and its view lists every send. The orchestrator can look a number
up only inside itself and the store not at all, and neither records resends; this index is what
the surface keeps instead of changing them. It learns of starts and ends as an observer of the
orchestrator (every surface's starts), of this surface's resends from its views, and of what was
pending before a restart from the store once, at start-up.

What it cannot know, and what the SID always reaches: a verification started on another replica
sharing the database, and resends made before a restart or on another replica (the view then
shows the first send only). An entry is a hint, checked against the orchestrator on every use.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from service.models import Clock, Status, Verification
from service.observers import IGNORED, Observer


@dataclass(slots=True)
class Entry:
    verification_id: str
    #: When the code was sent (asked to be), first to last, as Unix seconds.
    sends: list[float] = field(default_factory=list)
    #: Set when it ended with its attempts spent: kept until then (its deadline), so a check by
    #: number is told "max check attempts", as Twilio tells it, not "not found".
    kept_until: float | None = None


class Numbers:
    """By (owner, phone): the verification pending for it, as far as this process knows."""

    #: Starts between sweeps of the entries kept past their end.
    SWEEP_EVERY = 1024

    def __init__(self, clock: Clock = time.time) -> None:
        self._entries: dict[tuple[str, str], Entry] = {}
        self._clock = clock
        self._starts = 0

    def __len__(self) -> int:
        return len(self._entries)

    def seed(self, pending: Iterable[Verification]) -> None:
        for v in pending:
            self.started(v)

    def started(self, v: Verification) -> None:
        self._entries[(v.owner, v.phone)] = Entry(v.id, [v.sms_sent_at or v.created_at])
        self._starts += 1
        if self._starts % self.SWEEP_EVERY == 0:
            self._sweep()

    def finished(self, v: Verification) -> None:
        entry = self._entries.get((v.owner, v.phone))
        if entry is None or entry.verification_id != v.id:
            return
        if v.status is Status.MAX_ATTEMPTS_REACHED:
            entry.kept_until = v.expires_at
        else:
            del self._entries[(v.owner, v.phone)]

    def resent(self, v: Verification, at: float) -> None:
        entry = self._entries.get((v.owner, v.phone))
        if entry is None or entry.verification_id != v.id:
            entry = self._entries[(v.owner, v.phone)] = Entry(v.id, [v.sms_sent_at or v.created_at])
        entry.sends.append(at)

    def pending_for(self, owner: str, phone: str) -> str | None:
        """The verification pending for the number, or the one that spent its attempts lately."""
        entry = self._entries.get((owner, phone))
        if entry is None:
            return None
        if entry.kept_until is not None and entry.kept_until <= self._clock():
            del self._entries[(owner, phone)]
            return None
        return entry.verification_id

    def sends(self, v: Verification) -> list[float]:
        """The sends known of `v`: at least its first."""
        entry = self._entries.get((v.owner, v.phone))
        if entry is None or entry.verification_id != v.id:
            return [v.sms_sent_at or v.created_at]
        return list(entry.sends)

    def _sweep(self) -> None:
        now = self._clock()
        for key, entry in list(self._entries.items()):
            if entry.kept_until is not None and entry.kept_until <= now:
                del self._entries[key]


class Watching:
    """An observer telling `numbers` of starts and ends, and everything to `observer`."""

    def __init__(self, numbers: Numbers, observer: Observer = IGNORED) -> None:
        self._numbers = numbers
        self._observer = observer

    def started(self, v: Verification) -> None:
        self._numbers.started(v)
        self._observer.started(v)

    def finished(self, v: Verification) -> None:
        self._numbers.finished(v)
        self._observer.finished(v)

    def sms_sent(self) -> None:
        self._observer.sms_sent()

    def sms_failed(self) -> None:
        self._observer.sms_failed()

    def refused(self, reason: str) -> None:
        self._observer.refused(reason)

    def publish_failed(self, reason: str) -> None:
        self._observer.publish_failed(reason)

    def outcome_refused(self) -> None:
        self._observer.outcome_refused()

    def outcomes_dropped(self, count: int) -> None:
        self._observer.outcomes_dropped(count)

    def adopted(self, count: int) -> None:
        self._observer.adopted(count)
