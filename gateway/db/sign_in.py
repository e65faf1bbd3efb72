"""Dashboard sign-in codes: each is spent once (see ``gateway.auth.sessions``).

Invariant: ``spend`` inserts the code's jti under its primary key, so of any number of
redemptions of one code, on any number of replicas, exactly one returns True.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

_SPEND = text(
    "INSERT INTO sign_in_codes (jti, expires_at) VALUES (:jti, :expires_at) "
    "ON CONFLICT (jti) DO NOTHING RETURNING jti"
)
_FORGET = text("DELETE FROM sign_in_codes WHERE expires_at < now() - interval '1 day'")


async def spend(engine: AsyncEngine, jti: str, expires_at: datetime) -> bool:
    """Mark the code ``jti`` spent; False when it already was. Forgets codes long expired."""
    async with engine.begin() as conn:
        spent = (await conn.execute(_SPEND, {"jti": jti, "expires_at": expires_at})).first()
        await conn.execute(_FORGET)
    return spent is not None
