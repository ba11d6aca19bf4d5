"""Captcha images (PNG) drawn with the ``captcha`` package."""

from __future__ import annotations

import asyncio

from captcha.image import ImageCaptcha


class CaptchaRenderer:
    def __init__(self, width: int = 160, height: int = 60) -> None:
        self._image = ImageCaptcha(width=width, height=height)

    async def png(self, answer: str) -> bytes:
        """Render ``answer`` as a distorted PNG (off the event loop: drawing costs CPU)."""
        return await asyncio.to_thread(self._render, answer)

    def _render(self, answer: str) -> bytes:
        return bytes(self._image.generate(answer, format="png").getvalue())
