"""E-mail providers. The default writes ``.eml`` files to ``<data dir>/outbox/mail/``."""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib

from iotcloud.errors import MailSendFailed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    text: str
    html: str | None = None


class Mailer(Protocol):
    async def send(self, mail: Mail) -> None:
        """Deliver ``mail`` or raise :class:`MailSendFailed`."""
        ...


def build_message(mail: Mail, sender: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(domain="iotcloud")
    message.set_content(mail.text)
    if mail.html is not None:
        message.add_alternative(mail.html, subtype="html")
    return message


class OutboxMailer:
    """One RFC 5322 file per mail, written atomically (temp file then rename)."""

    def __init__(self, directory: Path, sender: str) -> None:
        self.directory = directory
        self.sender = sender

    async def send(self, mail: Mail) -> None:
        data = build_message(mail, self.sender).as_bytes()
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        name = f"{stamp}-{secrets.token_hex(4)}.eml"
        try:
            await asyncio.to_thread(self._write, name, data)
        except OSError as exc:
            log.error("cannot write mail outbox %s: %s", self.directory, exc)
            raise MailSendFailed(f"mail outbox not writable: {exc.strerror}") from exc

    def _write(self, name: str, data: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.replace(self.directory / name)


@dataclass(frozen=True)
class SmtpTarget:
    host: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool  # implicit TLS (smtps://)
    start_tls: bool

    @classmethod
    def parse(cls, url: str) -> SmtpTarget:
        """``smtp://user:pass@host:25?starttls=1`` or ``smtps://host:465``."""
        parts = urlsplit(url)
        if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
            raise ValueError(f"not an smtp:// or smtps:// URL: {url!r}")
        query = parse_qs(parts.query)
        implicit = parts.scheme == "smtps"
        return cls(
            host=parts.hostname,
            port=parts.port or (465 if implicit else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            use_tls=implicit,
            start_tls=query.get("starttls", ["0"])[0] in {"1", "true", "yes"},
        )


class SmtpMailer:
    """Sends through an SMTP server with aiosmtplib."""

    def __init__(self, target: SmtpTarget, sender: str, timeout: float = 15.0) -> None:
        self.target = target
        self.sender = sender
        self.timeout = timeout

    async def send(self, mail: Mail) -> None:
        t = self.target
        try:
            await aiosmtplib.send(
                build_message(mail, self.sender),
                hostname=t.host,
                port=t.port,
                username=t.username,
                password=t.password,
                use_tls=t.use_tls,
                start_tls=t.start_tls,
                timeout=self.timeout,
            )
        except (aiosmtplib.SMTPException, OSError) as exc:
            log.warning("SMTP delivery to %s:%s failed: %s", t.host, t.port, exc)
            raise MailSendFailed("the mail server did not accept the message") from exc
