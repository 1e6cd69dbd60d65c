"""Observers: what the domain tells whoever watches it (the metrics), as a typed protocol.

Each module that has something to tell takes an `Observer` in its constructor; `Metrics`
implements it, and `IGNORED` is the observer of tests and tools that watch nothing.
"""

from __future__ import annotations

from typing import Protocol

from service.models import Verification


class Observer(Protocol):
    def started(self, v: Verification) -> None:
        """A verification was started (not a resend, nor a replay)."""

    def finished(self, v: Verification) -> None:
        """A verification reached its final status, once."""

    def sms_sent(self) -> None:
        """The provider took an SMS."""

    def sms_failed(self) -> None:
        """An SMS could not be sent, its retries spent."""

    def refused(self, reason: str) -> None:
        """A start, or an SMS try, was refused by a limit or the destination policy."""

    def publish_failed(self, reason: str) -> None:
        """Publishing outcomes failed; it is retried."""

    def outcome_refused(self) -> None:
        """The queue refused an outcome for good; it is deferred and tried again later."""

    def outcomes_dropped(self, count: int) -> None:
        """Undelivered outcomes were dropped by retention."""

    def adopted(self, count: int) -> None:
        """Pending verifications of a replica whose lease lapsed were taken over here."""


class _Ignored:
    def started(self, v: Verification) -> None:
        pass

    def finished(self, v: Verification) -> None:
        pass

    def sms_sent(self) -> None:
        pass

    def sms_failed(self) -> None:
        pass

    def refused(self, reason: str) -> None:
        pass

    def publish_failed(self, reason: str) -> None:
        pass

    def outcome_refused(self) -> None:
        pass

    def outcomes_dropped(self, count: int) -> None:
        pass

    def adopted(self, count: int) -> None:
        pass


IGNORED: Observer = _Ignored()
