"""Secrets: opaque tokens (only their digests are stored), codes and password hashes."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import string
import uuid

from argon2 import PasswordHasher as _Argon2
from argon2.exceptions import InvalidHashError, VerificationError

TOKEN_BYTES = 16  # 32 hex characters, the shape Gizwits tokens have


def new_token() -> tuple[str, str]:
    """A fresh opaque token and the digest to store for it."""
    token = secrets.token_hex(TOKEN_BYTES)
    return token, digest(token)


def digest(secret: str) -> str:
    """SHA-256 hex digest; tokens are high-entropy, so no salt or stretching is needed."""
    return hashlib.sha256(secret.encode()).hexdigest()


def new_uid() -> str:
    return uuid.uuid4().hex


def new_numeric_code(length: int) -> str:
    return "".join(secrets.choice(string.digits) for _ in range(length))


def new_captcha_answer(length: int) -> str:
    # No 0/O or 1/I: they look alike in a distorted image.
    alphabet = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
    return "".join(secrets.choice(alphabet) for _ in range(length))


def same_secret(a: str, b: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(a.encode(), b.encode())


class PasswordHasher:
    """argon2id hashing off the event loop (each hash costs milliseconds of CPU)."""

    def __init__(self, time_cost: int, memory_kib: int, parallelism: int) -> None:
        self._hasher = _Argon2(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism)

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; a missing or corrupt hash never matches."""
        if not password_hash:
            # Spend the same time as a real check so timing does not reveal unknown users.
            await asyncio.to_thread(self._hasher.hash, password)
            return False
        try:
            return await asyncio.to_thread(self._hasher.verify, password_hash, password)
        except (VerificationError, InvalidHashError):
            return False
