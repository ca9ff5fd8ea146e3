"""Configuration from environment variables, one table for every service (see the README).

Seed names are kept as they are (`LLM_PROVIDER`, `OPENAI_*`, `GEMINI_*`); project settings use the
`SWITCHBOARD_` prefix and object storage `MINIO_*`. Every setting has an embedded default that runs
the whole stack on one machine.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from pathlib import Path
from typing import Annotated, Final, Literal

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _env(name: str) -> AliasChoices:
    return AliasChoices(name)


class Settings(BaseSettings):
    """All settings; each service reads the ones it needs."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    data_dir: Path = Field(Path("var"), validation_alias=_env("SWITCHBOARD_DATA_DIR"))
    log_level: str = Field("INFO", validation_alias=_env("SWITCHBOARD_LOG_LEVEL"))
    log_format: Literal["text", "json"] = Field("text", validation_alias=_env("SWITCHBOARD_LOG_FORMAT"))
    """`json`: one JSON object per line with request id, tenant and operation (services/common/logs.py)."""

    # Metrics (Prometheus text format, see services/common/metrics.py); the edge serves GET /metrics
    # on its own HTTP port, the gRPC services on a small HTTP port of their own. Empty: off.
    metrics_enabled: bool = Field(True, validation_alias=_env("SWITCHBOARD_METRICS_ENABLED"))
    """False: no service keeps metrics (no /metrics anywhere, nothing observed on the hot path)."""
    agent_metrics_listen: str = Field(
        "127.0.0.1:9464", validation_alias=_env("SWITCHBOARD_AGENT_METRICS_LISTEN")
    )
    upload_metrics_listen: str = Field(
        "127.0.0.1:9465", validation_alias=_env("SWITCHBOARD_UPLOAD_METRICS_LISTEN")
    )

    # Auth
    jwt_secret: str | None = Field(None, validation_alias=_env("SWITCHBOARD_JWT_SECRET"))
    jwt_issuer: str | None = Field(None, validation_alias=_env("SWITCHBOARD_JWT_ISSUER"))
    jwt_audience: str | None = Field(None, validation_alias=_env("SWITCHBOARD_JWT_AUDIENCE"))
    jwt_leeway_s: float = Field(5.0, ge=0, le=300, validation_alias=_env("SWITCHBOARD_JWT_LEEWAY_S"))
    """Clock skew allowed on `exp`, `nbf` and `iat`."""
    jwt_max_lifetime_s: int = Field(
        86_400, ge=60, le=30 * 86_400, validation_alias=_env("SWITCHBOARD_JWT_MAX_LIFETIME_S")
    )
    """Tokens whose `exp - iat` is longer are refused, in every mode."""
    oidc_issuer: str | None = Field(None, validation_alias=_env("SWITCHBOARD_OIDC_ISSUER"))
    """The identity provider's issuer URL: keys are found through its OIDC discovery document."""
    jwks_url: str | None = Field(None, validation_alias=_env("SWITCHBOARD_JWKS_URL"))
    """The identity provider's JWKS address, when there is no discovery document to find it in."""
    jwks_cache_ttl_s: float = Field(
        300.0, ge=1, le=86_400, validation_alias=_env("SWITCHBOARD_JWKS_CACHE_TTL_S")
    )
    """How long fetched keys are used before the JWKS is fetched again (a removed kid dies then)."""
    jwks_min_refresh_s: float = Field(
        30.0, ge=0, le=3600, validation_alias=_env("SWITCHBOARD_JWKS_MIN_REFRESH_S")
    )
    """At most one JWKS refetch per this interval for tokens with an unknown `kid`."""
    tenant_claim: str = Field("tenant", min_length=1, validation_alias=_env("SWITCHBOARD_TENANT_CLAIM"))
    user_claim: str = Field("sub", min_length=1, validation_alias=_env("SWITCHBOARD_USER_CLAIM"))
    role_claim: str = Field("role", min_length=1, validation_alias=_env("SWITCHBOARD_ROLE_CLAIM"))
    role_map: str = Field("", validation_alias=_env("SWITCHBOARD_ROLE_MAP"))
    """`IdPRole=ourrole,...`; with a map, a role not in it becomes `user`."""
    dev_stack: bool = Field(False, validation_alias=_env("SWITCHBOARD_DEV_STACK"))
    """Set by `switchboard dev` for its children: HS256 is expected there, so no warning."""

    # gRPC transport security, servers and clients alike
    grpc_tls_cert: Path | None = Field(None, validation_alias=_env("SWITCHBOARD_GRPC_TLS_CERT"))
    grpc_tls_key: Path | None = Field(None, validation_alias=_env("SWITCHBOARD_GRPC_TLS_KEY"))
    grpc_tls_ca: Path | None = Field(None, validation_alias=_env("SWITCHBOARD_GRPC_TLS_CA"))
    grpc_tls_server_name: str | None = Field(None, validation_alias=_env("SWITCHBOARD_GRPC_TLS_SERVER_NAME"))
    grpc_reflection: bool = Field(True, validation_alias=_env("SWITCHBOARD_GRPC_REFLECTION"))

    # Agent service
    agent_listen: str = Field("127.0.0.1:50051", validation_alias=_env("SWITCHBOARD_AGENT_LISTEN"))
    agent_workers: int = Field(1, ge=1, le=64, validation_alias=_env("SWITCHBOARD_AGENT_WORKERS"))
    """Agent service processes on `agent_listen` (SO_REUSEPORT), under one supervisor when > 1
    (services/agent_service/workers.py); 1 is one process and no supervisor."""
    database_path: Path | None = Field(None, validation_alias=_env("SWITCHBOARD_DATABASE_PATH"))
    app: str = Field("switchboard.demo:create_app", min_length=1, validation_alias=_env("SWITCHBOARD_APP"))
    """The app the agent service runs, `package.module:attribute` (see `switchboard.app`)."""
    history_items: int = Field(40, ge=2, le=1000, validation_alias=_env("SWITCHBOARD_HISTORY_ITEMS"))
    max_turns: int = Field(8, ge=1, le=50, validation_alias=_env("SWITCHBOARD_MAX_TURNS"))
    shutdown_grace_s: float = Field(20.0, ge=0, validation_alias=_env("SWITCHBOARD_SHUTDOWN_GRACE_S"))
    grpc_max_connection_age_s: float = Field(
        300.0, ge=1, validation_alias=_env("SWITCHBOARD_GRPC_MAX_CONNECTION_AGE_S")
    )
    """Servers close client connections after this long (gracefully), so clients re-resolve and
    spread their calls over new replicas."""

    # Database (threads, items, run leases); see docs/scale-out.md
    database_url: str | None = Field(None, validation_alias=_env("SWITCHBOARD_DATABASE_URL"))
    """`postgresql://user:password@host:5432/db` for PostgreSQL; unset means the embedded SQLite
    file at `database_path`."""
    database_pool_size: int = Field(
        10, ge=1, le=1000, validation_alias=_env("SWITCHBOARD_DATABASE_POOL_SIZE")
    )
    database_max_overflow: int = Field(
        10, ge=0, le=1000, validation_alias=_env("SWITCHBOARD_DATABASE_MAX_OVERFLOW")
    )
    database_pool_timeout_s: float = Field(
        5.0, gt=0, validation_alias=_env("SWITCHBOARD_DATABASE_POOL_TIMEOUT_S")
    )
    database_connect_timeout_s: float = Field(
        5.0, gt=0, validation_alias=_env("SWITCHBOARD_DATABASE_CONNECT_TIMEOUT_S")
    )
    database_statement_timeout_ms: int = Field(
        10_000, ge=0, validation_alias=_env("SWITCHBOARD_DATABASE_STATEMENT_TIMEOUT_MS")
    )
    database_pool_recycle_s: float = Field(
        1800.0, gt=0, validation_alias=_env("SWITCHBOARD_DATABASE_POOL_RECYCLE_S")
    )
    database_pool_pre_ping: bool = Field(False, validation_alias=_env("SWITCHBOARD_DATABASE_POOL_PRE_PING"))
    """Off: a connection broken while idle fails the one request that uses it (503, retryable) and
    makes the pool replace every connection; on: asyncpg checks each checkout with three round
    trips (BEGIN, an empty query, ROLLBACK), a quarter of a turn's."""
    database_synchronous_commit: Literal["", "on", "off", "local", "remote_write", "remote_apply"] = Field(
        "", validation_alias=_env("SWITCHBOARD_DATABASE_SYNCHRONOUS_COMMIT")
    )
    """PostgreSQL's `synchronous_commit` for the services' sessions; empty keeps the server's."""
    run_lease_ttl_s: float = Field(
        15.0, ge=0.5, le=3600, validation_alias=_env("SWITCHBOARD_RUN_LEASE_TTL_S")
    )
    """How long a run's claim on its thread survives without a heartbeat (a crashed replica's runs
    block their threads at most this long). Heartbeats renew it every third of it."""
    run_lease_wait_s: float = Field(0.0, ge=0, le=600, validation_alias=_env("SWITCHBOARD_RUN_LEASE_WAIT_S"))
    """How long a request for a busy thread waits for the running turn to end; 0 refuses at once
    (ABORTED, HTTP 409)."""

    # Limits (services/limits/): defaults for every tenant, overridden per tenant with
    # `switchboard limits set` or the admin service. 0 means no limit.
    limits_enabled: bool = Field(True, validation_alias=_env("SWITCHBOARD_LIMITS_ENABLED"))
    """Off: no limit is checked (usage is still accounted)."""
    limit_runs_per_user: int = Field(10, ge=0, validation_alias=_env("SWITCHBOARD_LIMIT_RUNS_PER_USER"))
    """Responses one user may have running at once, across every replica."""
    limit_runs_per_tenant: int = Field(0, ge=0, validation_alias=_env("SWITCHBOARD_LIMIT_RUNS_PER_TENANT"))
    """Responses one tenant may have running at once, across every replica."""
    limit_requests_per_minute: int = Field(
        300, ge=0, validation_alias=_env("SWITCHBOARD_LIMIT_REQUESTS_PER_MINUTE")
    )
    """Requests per minute per user to the agent and upload services (a token bucket)."""
    limit_request_burst: int = Field(60, ge=0, validation_alias=_env("SWITCHBOARD_LIMIT_REQUEST_BURST"))
    """Requests a user may make at once after a pause (the bucket's size; 0: a minute's worth)."""
    limit_tokens_per_day: int = Field(0, ge=0, validation_alias=_env("SWITCHBOARD_LIMIT_TOKENS_PER_DAY"))
    """Model tokens (input + output, as reported by the model) per tenant per UTC day."""
    limit_upload_bytes_per_day: int = Field(
        1024**3, ge=0, validation_alias=_env("SWITCHBOARD_LIMIT_UPLOAD_BYTES_PER_DAY")
    )
    """Bytes one user may upload per UTC day."""
    limit_stored_bytes: int = Field(0, ge=0, validation_alias=_env("SWITCHBOARD_LIMIT_STORED_BYTES"))
    """Attachment bytes one tenant may keep stored."""

    # Models
    llm_provider: Literal["openai", "gemini", "local"] | None = Field(
        None, validation_alias=_env("LLM_PROVIDER")
    )
    openai_api_key: str | None = Field(None, validation_alias=_env("OPENAI_API_KEY"))
    openai_default_model: str = Field("gpt-4.1-mini", validation_alias=_env("OPENAI_DEFAULT_MODEL"))
    openai_base_url: str | None = Field(None, validation_alias=_env("OPENAI_BASE_URL"))
    gemini_api_key: str | None = Field(None, validation_alias=_env("GEMINI_API_KEY"))
    gemini_default_model: str = Field("gemini-2.5-flash", validation_alias=_env("GEMINI_DEFAULT_MODEL"))
    gemini_base_url: str = Field(
        "https://generativelanguage.googleapis.com/v1beta/openai/",
        validation_alias=_env("GEMINI_BASE_URL"),
    )
    local_token_delay_ms: float = Field(
        15.0, ge=0, le=10_000, validation_alias=_env("SWITCHBOARD_LOCAL_TOKEN_DELAY_MS")
    )

    # Dictation (input.transcribe)
    transcribe_model: str = Field(
        "gpt-4o-mini-transcribe", min_length=1, validation_alias=_env("SWITCHBOARD_TRANSCRIBE_MODEL")
    )
    """The provider's speech-to-text model (its OpenAI-compatible `/audio/transcriptions`)."""
    transcribe_max_bytes: int = Field(
        10 * 1024 * 1024, ge=1, le=15 * 1024 * 1024, validation_alias=_env("SWITCHBOARD_TRANSCRIBE_MAX_BYTES")
    )
    """The largest recording accepted (decoded bytes). At most 15 MiB: one gRPC message carries it.
    The edge reads `input.transcribe` bodies up to this size in base64, whatever
    `SWITCHBOARD_MAX_BODY_BYTES` says (that limit applies to every other operation)."""
    transcribe_timeout_s: float = Field(
        60.0, gt=0, le=600, validation_alias=_env("SWITCHBOARD_TRANSCRIBE_TIMEOUT_S")
    )
    """How long the provider (or the app) may take to transcribe one recording; the edge waits this
    long plus a few seconds."""

    # Upload service and object storage
    upload_listen: str = Field("127.0.0.1:50052", validation_alias=_env("SWITCHBOARD_UPLOAD_LISTEN"))
    upload_address: str = Field("127.0.0.1:50052", validation_alias=_env("SWITCHBOARD_UPLOAD_ADDRESS"))
    upload_max_bytes: int = Field(
        100 * 1024 * 1024, ge=1, validation_alias=_env("SWITCHBOARD_UPLOAD_MAX_BYTES")
    )
    upload_allowed_types: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [
            "image/png",
            "image/jpeg",
            "image/gif",
            "image/webp",
            "application/pdf",
            "text/plain",
            "text/markdown",
            "text/csv",
            "application/json",
        ],
        validation_alias=_env("SWITCHBOARD_UPLOAD_ALLOWED_TYPES"),
    )
    upload_max_per_user: int = Field(
        4, ge=1, le=1000, validation_alias=_env("SWITCHBOARD_UPLOAD_MAX_PER_USER")
    )
    """Direct uploads one user may stream at once (per upload service replica); more are refused
    with RESOURCE_EXHAUSTED (HTTP 429 with Retry-After) instead of queueing."""
    upload_chunk_timeout_s: float = Field(
        60.0, gt=0, le=3600, validation_alias=_env("SWITCHBOARD_UPLOAD_CHUNK_TIMEOUT_S")
    )
    """A direct upload is cut when its next chunk takes longer than this: at the edge, a whole
    1 MiB chunk (or the end of the file) must arrive within it (HTTP 408); at the upload service,
    the next message (DEADLINE_EXCEEDED)."""
    upload_pending_ttl_s: int = Field(
        86_400, ge=60, validation_alias=_env("SWITCHBOARD_UPLOAD_PENDING_TTL_S")
    )
    """Two-phase uploads never attached, and objects no record refers to, are swept after this."""
    upload_sweep_interval_s: float = Field(
        3600.0, ge=0, validation_alias=_env("SWITCHBOARD_UPLOAD_SWEEP_INTERVAL_S")
    )
    """How often each upload service replica sweeps the bucket; 0 turns the periodic sweep off."""
    presign_ttl_s: int = Field(300, ge=1, le=7 * 86_400, validation_alias=_env("SWITCHBOARD_PRESIGN_TTL_S"))
    """Lifetime of presigned upload and preview URLs. S3 allows 1 s to 7 days; a few seconds only
    make sense in tests of expiry (a browser needs time to start its PUT or GET)."""
    minio_endpoint: str | None = Field(None, validation_alias=_env("MINIO_ENDPOINT"))
    """host:port of the S3 API; unset in `switchboard dev` means: start a local S3 server."""
    minio_public_endpoint: str | None = Field(None, validation_alias=_env("MINIO_PUBLIC_ENDPOINT"))
    """host:port browsers use for presigned URLs, when it differs from MINIO_ENDPOINT."""
    minio_access_key: str = Field("switchboard", validation_alias=_env("MINIO_ACCESS_KEY"))
    minio_secret_key: str = Field("switchboard-secret", validation_alias=_env("MINIO_SECRET_KEY"))
    minio_bucket: str = Field("switchboard-attachments", validation_alias=_env("MINIO_BUCKET"))
    minio_secure: bool = Field(False, validation_alias=_env("MINIO_SECURE"))
    minio_region: str = Field("us-east-1", validation_alias=_env("MINIO_REGION"))

    # Edge
    edge_host: str = Field("127.0.0.1", validation_alias=_env("SWITCHBOARD_EDGE_HOST"))
    edge_port: int = Field(8080, ge=0, le=65535, validation_alias=_env("SWITCHBOARD_EDGE_PORT"))
    agent_address: str = Field("127.0.0.1:50051", validation_alias=_env("SWITCHBOARD_AGENT_ADDRESS"))
    agent_connections: int = Field(1, ge=1, le=64, validation_alias=_env("SWITCHBOARD_AGENT_CONNECTIONS"))
    """HTTP/2 connections the edge keeps to each agent address, calls taking them in turn: an agent
    with workers (SO_REUSEPORT) gets each connection on one worker, so one connection would feed
    one worker only."""
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=_env("SWITCHBOARD_CORS_ORIGINS")
    )
    max_body_bytes: int = Field(1_048_576, ge=1024, validation_alias=_env("SWITCHBOARD_MAX_BODY_BYTES"))
    rpc_timeout_s: float = Field(10.0, gt=0, validation_alias=_env("SWITCHBOARD_RPC_TIMEOUT_S"))
    stream_timeout_s: float = Field(300.0, gt=0, validation_alias=_env("SWITCHBOARD_STREAM_TIMEOUT_S"))
    sse_keepalive_s: float = Field(0.0, ge=0, validation_alias=_env("SWITCHBOARD_SSE_KEEPALIVE_S"))
    """When > 0, a stream that sent nothing for this long gets an SSE comment (`: ping`), so proxies
    with idle timeouts keep it open; 0 (the default) sends none."""
    chatkit_domain_key: str = Field("local-dev", validation_alias=_env("SWITCHBOARD_CHATKIT_DOMAIN_KEY"))
    demo_token: str | None = Field(None, validation_alias=_env("SWITCHBOARD_DEMO_TOKEN"))
    """When set (the dev stack sets it), `GET /` serves the ChatKit demo page with this token."""

    @field_validator("cors_origins", "upload_allowed_types", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @property
    def agent_target(self) -> str:
        """`agent_address` as a gRPC target (see `grpc_target`)."""
        return grpc_target(self.agent_address)

    @property
    def upload_target(self) -> str:
        """`upload_address` as a gRPC target (see `grpc_target`)."""
        return grpc_target(self.upload_address)

    @property
    def store_path(self) -> Path:
        return self.database_path or self.data_dir / "switchboard.sqlite3"

    def resolve_jwt_secret(self) -> str:
        """The HS256 key: `SWITCHBOARD_JWT_SECRET`, else a random key kept in the data directory.

        The file fallback makes the one-machine stack secure without configuration: a fresh random
        key is created once (mode 0600) and every local process reads the same one. Clusters set the
        variable from a Secret so that every replica shares it.
        """
        if self.jwt_secret:
            if len(self.jwt_secret) < 32:
                raise ValueError("SWITCHBOARD_JWT_SECRET must be at least 32 characters")
            return self.jwt_secret
        path = self.data_dir / "jwt-secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(48))
        secret = path.read_text().strip()
        if len(secret) < 32:
            raise ValueError(f"the JWT secret in {path} must be at least 32 characters")
        return secret


_TARGET_SCHEMES: Final = ("dns:", "ipv4:", "ipv6:", "unix:", "unix-abstract:", "vsock:", "xds:")


def grpc_target(address: str) -> str:
    """Turn an address setting into a gRPC channel target that client-side load balancing can use.

    - a target with a scheme is kept: `dns:///agent.switchboard.svc:50051` (a Kubernetes headless
      service: the name resolves to every ready pod and `round_robin` spreads calls over them),
      `ipv4:10.0.0.5:50051,10.0.0.6:50051`, `unix:/run/agent.sock`;
    - one `host:port` is kept (gRPC resolves it with DNS);
    - a comma-separated list of `host:port` (local runs with several replicas) becomes gRPC's static
      list `ipv4:a:p,b:p` (or `ipv6:[a]:p,...`). `localhost` counts as 127.0.0.1. gRPC has no
      target for a list of DNS names, so a list must use IP literals; give one DNS name that
      resolves to every replica instead.

    Raises ValueError with an explanation for a list that cannot be expressed.
    """
    address = address.strip()
    if address.startswith(_TARGET_SCHEMES) or "," not in address:
        return address
    entries = [entry.strip() for entry in address.split(",") if entry.strip()]
    v4: list[str] = []
    v6: list[str] = []
    for entry in entries:
        host, sep, port = entry.rpartition(":")
        if not sep or not port.isdigit():
            raise ValueError(f"{entry!r} in {address!r} is not host:port")
        if host == "localhost":
            host = "127.0.0.1"
        if host.startswith("[") and host.endswith("]"):
            ipaddress.IPv6Address(host[1:-1])
            v6.append(f"{host}:{port}")
            continue
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                f"{address!r}: a list of addresses must use IP literals ({host!r} is a name); gRPC "
                "cannot balance over several DNS names: use one name that resolves to every replica, "
                "e.g. dns:///agent:50051 with a Kubernetes headless service"
            ) from None
        v4.append(f"{host}:{port}")
    if v4 and v6:
        raise ValueError(f"{address!r} mixes IPv4 and IPv6 addresses; gRPC needs one family per list")
    return "ipv4:" + ",".join(v4) if v4 else "ipv6:" + ",".join(v6)


def load_settings() -> Settings:
    return Settings()
