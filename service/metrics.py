"""Prometheus metrics, in a registry of the app's own, served at /metrics.

Counters are bumped through the `Observer` protocol (`service.observers`), which `Metrics`
implements and the domain's modules take in their constructors; the outbox gauges are read from
the store when Prometheus scrapes: a count the store keeps and one indexed row, never a scan on
the request path.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import phonenumbers
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from service.api.keys import store_key
from service.models import Verification
from service.store import Store
from service.validation import country_code

#: Methods kept as they are in the latency label; any other (clients may send any token) is
#: "other", so a caller cannot grow the number of series.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The route label of requests that matched no route (404, 405).
UNMATCHED = "unmatched"


class Metrics:
    """The service's metrics; one instance per app, since tests build many apps in a process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._started = Counter("verifications_started", "Verifications started.", registry=r)
        self._finished = Counter(
            "verifications_finished",
            "Verifications that reached a final status, by that status.",
            ["status"],
            registry=r,
        )
        self._by_country = Counter(
            "verifications_finished_by_country",
            "Verifications that reached a final status, by destination calling code and status."
            " Approval rate per country: sum by (country_code)"
            ' (rate(verifications_finished_by_country_total{status="approved"}[1h]))'
            " / sum by (country_code) (rate(verifications_finished_by_country_total[1h])).",
            ["country_code", "status"],
            registry=r,
        )
        self._sms_sent = Counter("sms_sent", "SMS challenges the provider accepted.", registry=r)
        self._adopted = Counter(
            "verifications_adopted",
            "Pending verifications taken over from replicas whose lease lapsed or that left.",
            registry=r,
        )
        self._sms_failed = Counter(
            "sms_failed", "SMS challenges that could not be sent, retries spent.", registry=r
        )
        self._refused = Counter(
            "verification_starts_refused",
            "Starts refused before anything was sent, by reason (rate_limited_phone,"
            " rate_limited_key, sms_budget, country_not_allowed).",
            ["reason"],
            registry=r,
        )
        self._pending = Gauge(
            "verifications_pending", "Verifications waiting for their code.", registry=r
        )
        self._outbox_depth = Gauge(
            "outbox_depth", "Outcomes not yet delivered to the queue.", registry=r
        )
        self._outbox_age = Gauge(
            "outbox_oldest_age_seconds",
            "Age of the oldest outcome not yet delivered to the queue; 0 when there is none.",
            registry=r,
        )
        self._publisher_up = Gauge(
            "outbox_publisher_up",
            "1 when the publisher's last attempt to reach the queue succeeded; 0 while it fails"
            " (it retries for ever) and when publishing is off.",
            registry=r,
        )
        self._publish_failures = Counter(
            "outbox_publish_failures",
            "Failed attempts to publish outcomes or find the queue, by reason (unavailable,"
            " queue_not_found, no_credentials, rejected, error).",
            ["reason"],
            registry=r,
        )
        self._refused_outcomes = Counter(
            "outbox_outcomes_refused",
            "Outcomes the queue refused (an invalid message); each is tried again later.",
            registry=r,
        )
        self._dropped_outcomes = Counter(
            "outbox_outcomes_dropped",
            "Outcomes dropped by retention, never delivered within keep_finished_seconds.",
            registry=r,
        )
        self._latency = Histogram(
            "http_request_duration_seconds",
            "Time to answer HTTP requests, by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self._webhook_delivered = Counter(
            "webhook_delivered",
            "Outcomes a webhook endpoint answered 2xx to, by endpoint.",
            ["endpoint"],
            registry=r,
        )
        self._webhook_failed = Counter(
            "webhook_failed_attempts",
            "Failed webhook attempts, by endpoint and reason (status_4xx, status_5xx, redirect,"
            " timeout, unreachable, refused_address, gone, error); each is tried again.",
            ["endpoint", "reason"],
            registry=r,
        )
        self._webhook_dropped = Counter(
            "webhook_dropped",
            "Outcomes given up for an endpoint: past their horizon, or the endpoint disabled.",
            ["endpoint"],
            registry=r,
        )
        self._webhook_undelivered = Gauge(
            "webhook_undelivered",
            "Outcomes not yet delivered, by endpoint.",
            ["endpoint"],
            registry=r,
        )
        self._webhook_age = Gauge(
            "webhook_oldest_undelivered_age_seconds",
            "Age of the oldest outcome not yet delivered, by endpoint; 0 when there is none.",
            ["endpoint"],
            registry=r,
        )
        self._webhook_disabled = Gauge(
            "webhook_endpoint_disabled",
            "1 once an endpoint answered 410 Gone: nothing is sent to it until its url changes.",
            ["endpoint"],
            registry=r,
        )
        self._webhook_endpoints: tuple[str, ...] = ()
        self._by_surface = Counter(
            "http_requests_by_surface",
            "HTTP requests answered, by API surface (v1, twilio_verify_v2, durable_functions,"
            " operations) and status.",
            ["surface", "status"],
            registry=r,
        )
        self._countries: dict[str, str] = {}

    # -- the domain's hooks -----------------------------------------------------------------------

    def started(self, v: Verification) -> None:
        self._started.inc()

    def finished(self, v: Verification) -> None:
        status = v.status.value
        self._finished.labels(status).inc()
        self._by_country.labels(self._country(v.phone), status).inc()

    def sms_sent(self) -> None:
        self._sms_sent.inc()

    def sms_failed(self) -> None:
        self._sms_failed.inc()

    def refused(self, reason: str) -> None:
        self._refused.labels(reason).inc()

    def adopted(self, count: int) -> None:
        self._adopted.inc(count)

    def watch_pending(self, count: Callable[[], int]) -> None:
        """Read the pending gauge from `count` at each scrape (`Orchestrator.pending_count`)."""
        self._pending.set_function(count)

    # -- the publisher's and retention's hooks ----------------------------------------------------

    def watch_publisher(self, up: Callable[[], bool]) -> None:
        self._publisher_up.set_function(lambda: float(up()))

    def publish_failed(self, reason: str) -> None:
        self._publish_failures.labels(reason).inc()

    def outcome_refused(self) -> None:
        self._refused_outcomes.inc()

    def outcomes_dropped(self, count: int) -> None:
        self._dropped_outcomes.inc(count)

    # -- the webhooks' hooks -----------------------------------------------------------------------

    def watch_webhooks(self, endpoints: list[str]) -> None:
        """Read these endpoints' gauges from the store at each scrape; their series from 0."""
        self._webhook_endpoints = tuple(endpoints)
        for name in endpoints:
            self._webhook_delivered.labels(name)
            self._webhook_dropped.labels(name)

    def webhook_delivered(self, endpoint: str) -> None:
        self._webhook_delivered.labels(endpoint).inc()

    def webhook_failed(self, endpoint: str, reason: str) -> None:
        self._webhook_failed.labels(endpoint, reason).inc()

    def webhook_dropped(self, endpoint: str, count: int) -> None:
        self._webhook_dropped.labels(endpoint).inc(count)

    # -- HTTP -------------------------------------------------------------------------------------

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        method = method if method in METHODS else "other"
        self._latency.labels(route, method, str(status)).observe(seconds)
        self._by_surface.labels(surface_of(route), str(status)).inc()

    async def refresh(self, store: Store) -> None:
        """Read the outbox gauges from the database, which has no callback to offer."""
        depth, oldest = await store.outbox_depth()
        self._outbox_depth.set(depth)
        self._outbox_age.set(max(0.0, time.time() - oldest) if oldest is not None else 0.0)
        for name in self._webhook_endpoints:
            backlog = await store.webhook_backlog(name)
            age = max(0.0, time.time() - backlog.oldest) if backlog.oldest is not None else 0.0
            self._webhook_undelivered.labels(name).set(backlog.undelivered)
            self._webhook_age.labels(name).set(age)
            self._webhook_disabled.labels(name).set(float(backlog.disabled))

    def _country(self, phone: str) -> str:
        # A calling code is decided by at most three digits, so one parse per prefix is enough:
        # parsing every number would cost more than the rest of the metrics together.
        prefix = phone[:4]
        found = self._countries.get(prefix)
        if found is None:
            try:
                found = country_code(phone)
            except phonenumbers.NumberParseException:
                return "unknown"  # a masked or malformed number; the hook must never raise
            self._countries[prefix] = found
        return found


metrics_key = web.AppKey("metrics", Metrics)

#: The API surfaces, by the prefix of their routes; anything else is an operations route.
SURFACES = (
    ("/verifications", "v1"),
    ("/v2/openapi.json", "operations"),
    ("/v2/", "twilio_verify_v2"),
    ("/runtime/webhooks/durabletask/openapi.json", "operations"),
    ("/runtime/webhooks/durabletask/", "durable_functions"),
    ("/api/orchestrators/", "durable_functions"),
    ("/orchestrators/", "durable_functions"),
)


def surface_of(route: str) -> str:
    for prefix, surface in SURFACES:
        if route.startswith(prefix):
            return surface
    return "operations"


def metrics_middleware(metrics: Metrics) -> Middleware:
    """Time every request; outermost, so error responses are timed and counted as sent."""

    @web.middleware
    async def measure(request: web.Request, handler: Handler) -> web.StreamResponse:
        began = time.perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # only what `errors` lets through: redirects
            _observe(metrics, request, exc.status, began)
            raise
        _observe(metrics, request, response.status, began)
        return response

    return measure


def _observe(metrics: Metrics, request: web.Request, status: int, began: float) -> None:
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else UNMATCHED
    metrics.request(route, request.method, status, time.perf_counter() - began)


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[metrics_key]
    await metrics.refresh(request.app[store_key])
    return web.Response(
        body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )
