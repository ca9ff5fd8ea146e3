"""Transport security for every gRPC hop: server credentials and client channels, in one place.

Configured from three PEM files (in a cluster: the `tls.crt`, `tls.key` and `ca.crt` of a
cert-manager Certificate's Secret, mounted into each pod):

- nothing: plaintext on both ends;
- CERT + KEY: servers speak TLS; clients speak TLS, trust the system roots and present CERT;
- CERT + KEY + CA: servers REQUIRE client certificates signed by CA (mTLS); clients trust only CA
  and present CERT;
- CA alone: clients speak TLS trusting only CA, without a certificate; a server refuses to start
  (it has nothing to present).

One pair serves both directions, as each service is a server and (edge, agent) a client: the
certificate should carry both the serverAuth and clientAuth usages. `SWITCHBOARD_GRPC_TLS_SERVER_NAME`
overrides the name clients expect in the server's certificate, for addresses that are not in it
(an IP list, 127.0.0.1 in tests). The files are read when a server starts or a channel is created;
a renewed certificate takes effect on restart (cert-manager renews well before expiry, and a
rollout restarts pods).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from services.common import tracing
from services.common.config import Settings

ChannelOptions = Sequence[tuple[str, Any]]


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """The PEM files of `SWITCHBOARD_GRPC_TLS_*`, validated as a combination (see the list above)."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None
    server_name: str | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> TlsFiles:
        files = cls(
            settings.grpc_tls_cert, settings.grpc_tls_key, settings.grpc_tls_ca, settings.grpc_tls_server_name
        )
        if (files.cert is None) != (files.key is None):
            raise ValueError("SWITCHBOARD_GRPC_TLS_CERT and SWITCHBOARD_GRPC_TLS_KEY go together")
        return files

    @property
    def client_tls(self) -> bool:
        return self.cert is not None or self.ca is not None

    @property
    def server_tls(self) -> bool:
        return self.cert is not None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS server credentials (requiring client certificates when a CA is set); None: plaintext."""
    files = TlsFiles.from_settings(settings)
    if files.cert is None or files.key is None:
        if files.ca is not None:
            raise ValueError(
                "SWITCHBOARD_GRPC_TLS_CA on a server needs SWITCHBOARD_GRPC_TLS_CERT and _KEY as well"
            )
        return None
    ca = files.ca.read_bytes() if files.ca is not None else None
    return grpc.ssl_server_credentials(
        [(files.key.read_bytes(), files.cert.read_bytes())],
        root_certificates=ca,
        require_client_auth=ca is not None,
    )


def bind(server: aio.Server, address: str, settings: Settings) -> int:
    """Listen on `address`, with TLS when configured; the port (0 when it could not bind)."""
    credentials = server_credentials(settings)
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)


def client_channel(target: str, settings: Settings | None, *, options: ChannelOptions = ()) -> aio.Channel:
    """A grpc.aio channel to `target`, with TLS (and a client certificate) when configured.

    `settings=None` is a plaintext channel (callers that have no settings, such as tests). When
    tracing is on, every call on the channel gets a client span and carries `traceparent`
    (`services/common/tracing.py`).
    """
    files = TlsFiles.from_settings(settings) if settings is not None else TlsFiles()
    interceptors = tracing.client_interceptors() or None
    if not files.client_tls:
        return aio.insecure_channel(target, options=options, interceptors=interceptors)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=files.ca.read_bytes() if files.ca is not None else None,
        private_key=files.key.read_bytes() if files.key is not None else None,
        certificate_chain=files.cert.read_bytes() if files.cert is not None else None,
    )
    if files.server_name:
        options = [*options, ("grpc.ssl_target_name_override", files.server_name)]
    return aio.secure_channel(target, credentials, options=options, interceptors=interceptors)
