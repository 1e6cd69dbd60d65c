"""Typed keys for what the application holds: the HTTP edge reaches the domain through these."""

from __future__ import annotations

from aiohttp import web

from service.config import Settings
from service.orchestrator.orchestrator import Orchestrator
from service.sms.base import SmsSender
from service.store import Store

settings_key = web.AppKey("settings", Settings)
store_key: web.AppKey[Store] = web.AppKey("store")
orchestrator_key = web.AppKey("orchestrator", Orchestrator)
sender_key: web.AppKey[SmsSender] = web.AppKey("sender")
