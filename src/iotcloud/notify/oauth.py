"""Third-party sign-in verifiers: check a client's (uid, token) with the provider that issued it.

Configured per ``src`` with ``IOTCLOUD_AUTH_PROVIDERS``, a JSON object mapping a source name to
its verification URL or to ``{"url": ..., "kind": ...}``. ``kind`` selects how the provider is
asked; it defaults to the source name when that is a known kind, else ``generic``:

* ``qq``: ``GET url?access_token=T`` answers ``{"openid": ...}`` (plain or JSONP); openid == uid.
* ``wechat``: ``GET url?access_token=T&openid=U`` answers ``{"errcode": 0}``.
* ``baidu``: ``GET url?access_token=T`` answers ``{"uid": ...}``; uid must match.
* ``sina``: ``POST url`` with form ``access_token=T`` answers ``{"uid": ...}``; uid must match.
* ``generic``: ``GET url?uid=U&token=T[&token_secret=S]`` answers 2xx ``{"uid": ...}``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx

from iotcloud.codecs.jsonlimits import decode_json
from iotcloud.errors import FormInvalid, ThirdPartyAuthInvalid

log = logging.getLogger(__name__)

#: Sources a Gizwits client may name in ``authData.src``.
KNOWN_SOURCES = frozenset(
    {"qq", "sina", "baidu", "wechat", "twitter", "facebook", "google", "amazon"}
)
KINDS = frozenset({"qq", "wechat", "baidu", "sina", "generic"})
_JSONP = re.compile(r"^\s*\w+\s*\(\s*(\{.*\})\s*\)\s*;?\s*$", re.S)


@dataclass(frozen=True)
class ThirdPartyIdentity:
    src: str
    uid: str
    token: str
    token_secret: str | None = None


@dataclass(frozen=True)
class ProviderConfig:
    src: str
    url: str
    kind: str


def parse_providers(raw: Mapping[str, Any]) -> dict[str, ProviderConfig]:
    """Validate ``IOTCLOUD_AUTH_PROVIDERS``; raises ValueError naming the bad entry."""
    providers: dict[str, ProviderConfig] = {}
    for src, entry in raw.items():
        if isinstance(entry, str):
            url, kind = entry, None
        elif isinstance(entry, Mapping) and isinstance(entry.get("url"), str):
            url, kind = entry["url"], entry.get("kind")
        else:
            raise ValueError(f"auth provider {src!r}: give a URL or {{'url': ..., 'kind': ...}}")
        kind = kind or (src if src in KINDS else "generic")
        if kind not in KINDS:
            raise ValueError(f"auth provider {src!r}: unknown kind {kind!r}")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"auth provider {src!r}: {url!r} is not an http(s) URL")
        providers[src] = ProviderConfig(src=src, url=url, kind=kind)
    return providers


class ThirdPartyVerifier:
    """Asks the configured provider whether a third-party identity is genuine."""

    def __init__(self, providers: Mapping[str, ProviderConfig], client: httpx.AsyncClient) -> None:
        self.providers = dict(providers)
        self.client = client

    async def verify(self, identity: ThirdPartyIdentity) -> None:
        """Return when the provider confirms ``identity``.

        Raises ``FormInvalid`` for an unknown source and ``ThirdPartyAuthInvalid`` (9031) when the
        source is not configured, the provider rejects the token or cannot be reached.
        """
        src = identity.src
        config = self.providers.get(src)
        if config is None:
            if src in KNOWN_SOURCES:
                raise ThirdPartyAuthInvalid(f"sign-in with {src} is not configured on this server")
            raise FormInvalid(f"authData.src: unknown source {src!r}")
        try:
            confirmed = await self._ask(config, identity)
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("auth provider %s (%s) failed: %s", src, config.url, exc)
            raise ThirdPartyAuthInvalid(f"the {src} provider could not be asked") from exc
        if not confirmed:
            raise ThirdPartyAuthInvalid(f"the {src} provider rejected this uid and token")

    async def _ask(self, config: ProviderConfig, identity: ThirdPartyIdentity) -> bool:
        if config.kind == "sina":
            response = await self.client.post(config.url, data={"access_token": identity.token})
        else:
            params = {
                "qq": {"access_token": identity.token},
                "baidu": {"access_token": identity.token},
                "wechat": {"access_token": identity.token, "openid": identity.uid},
                "generic": {"uid": identity.uid, "token": identity.token},
            }[config.kind]
            if config.kind == "generic" and identity.token_secret:
                params["token_secret"] = identity.token_secret
            response = await self.client.get(config.url, params=params)
        if not response.is_success:
            return False
        body = _json_body(response.text)
        if config.kind == "qq":
            return str(body.get("openid", "")) == identity.uid
        if config.kind == "wechat":
            return body.get("errcode") == 0
        return str(body.get("uid", "")) == identity.uid


def _json_body(text: str) -> dict[str, Any]:
    match = _JSONP.match(text)
    value = decode_json(match.group(1) if match else text)  # a JsonRejected is a ValueError
    if not isinstance(value, dict):
        raise ValueError("provider answer is not a JSON object")
    return value
