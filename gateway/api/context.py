"""Application state, behind typed ``web.AppKey``s."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from gateway.auth.authenticator import Authenticator
from gateway.backends.base import Inventory, Runtime
from gateway.db.notify import Notifier
from gateway.db.submits import Submits
from gateway.domain.jobs.spec import SpecLimits
from gateway.settings import Settings

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", AsyncEngine)
SPEC_LIMITS = web.AppKey("spec_limits", SpecLimits)
INVENTORY = web.AppKey("inventory", Inventory)
RUNTIME: web.AppKey[Runtime | None] = web.AppKey("runtime")
NOTIFIER = web.AppKey("notifier", Notifier)
AUTHENTICATOR = web.AppKey("authenticator", Authenticator)
SUBMITS = web.AppKey("submits", Submits)
