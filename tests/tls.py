"""A throwaway certificate authority for TLS tests, made with the ``openssl`` command.

`ThrowawayCA.create` writes a CA and a server certificate it signed for ``localhost`` and
``127.0.0.1`` (P-256 keys: fast to make). The server gets ``chain`` (server certificate, then the
CA's) and ``key``; clients trust ``ca`` through `client_context`. ``ca_key`` is a key that does
not belong to the server certificate, and `encrypted_key` the server key under a password.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
_SERVER_EXTENSIONS = """\
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class ThrowawayCA:
    """PEM files in one directory: the CA certificate and key, the server's chain and key."""

    ca: Path
    ca_key: Path
    chain: Path
    key: Path

    @classmethod
    def create(cls, directory: Path) -> ThrowawayCA:
        """Make a CA and a server certificate for localhost/127.0.0.1 in ``directory``."""
        openssl = shutil.which("openssl")
        assert openssl is not None, "the openssl command is needed (Debian package openssl)"
        run = _runner(openssl)
        directory.mkdir(parents=True, exist_ok=True)
        ca, ca_key = directory / "ca.pem", directory / "ca.key"
        cert, key, request = directory / "server.pem", directory / "server.key", directory / "req"
        extensions = directory / "server.ext"
        extensions.write_text(_SERVER_EXTENSIONS)

        run("req", "-x509", *_EC, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=CA")
        run("req", "-new", *_EC, "-keyout", key, "-out", request, "-subj", "/CN=localhost")
        run(
            "x509",
            "-req",
            "-in",
            request,
            "-CA",
            ca,
            "-CAkey",
            ca_key,
            "-days",
            "2",
            "-extfile",
            extensions,
            "-out",
            cert,
        )
        chain = directory / "chain.pem"
        chain.write_text(cert.read_text() + ca.read_text())
        return cls(ca=ca, ca_key=ca_key, chain=chain, key=key)

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts this CA only and checks the host name."""
        return ssl.create_default_context(cafile=str(self.ca))

    def encrypted_key(self, path: Path, password: str) -> Path:
        """The server key written to ``path`` encrypted with ``password``."""
        openssl = shutil.which("openssl")
        assert openssl is not None
        _runner(openssl)(
            "pkey", "-in", self.key, "-aes256", "-passout", f"pass:{password}", "-out", path
        )
        return path


def _runner(openssl: str) -> Callable[..., None]:
    def run(*args: str | Path) -> None:
        subprocess.run([openssl, *map(str, args)], check=True, capture_output=True)

    return run
