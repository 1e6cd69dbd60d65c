"""Typed keys for what the application holds: the HTTP edge reaches the domain through these."""

from __future__ import annotations

from aiohttp import web

from service.config import Settings
from service.orchestrator.orchestrator import Orchestrator
from service.store.sqlite.store import Store

settings_key = web.AppKey("settings", Settings)
store_key = web.AppKey("store", Store)
orchestrator_key = web.AppKey("orchestrator", Orchestrator)
