"""`switchboard`: run the services, migrate the database, run the whole stack for development, mint
tokens, chat over gRPC, report usage and set limits.

Every setting comes from the environment (see the README's configuration table); the few flags here
override the matching variables for one run.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from pydantic import ValidationError

from services.common.auth import Principal, mint_token
from services.common.config import Settings, grpc_target, load_settings
from services.common.logs import configure_logging
from services.common.principal import PLATFORM_ADMIN_ROLE

if TYPE_CHECKING:
    from services.agent_service.store import SqlStore
    from services.limits import Limits, LimitsStore, UsageRow
    from services.upload_service.embedded_s3 import SeaweedFS

DEV_TENANT: Final = "acme"
DEV_USER: Final = "demo"
DEV_ROLE: Final = "user"
DEV_S3_PORT: Final = 9000


def _configure_logging(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)


# --------------------------------------------------------------------------- services


def _run_agent(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {"agent_listen": args.listen} if args.listen else {}
    if args.app:
        overrides["app"] = args.app
    if args.workers is not None:
        overrides["agent_workers"] = args.workers
    try:
        settings = load_settings().model_copy(update=overrides)
    except ValidationError as error:
        return _refuse("agent", _invalid_settings(error), 2)
    _configure_logging(settings)
    if settings.agent_workers > 1:
        # A supervisor of N worker processes on one address (services/agent_service/workers.py).
        from services.agent_service.workers import supervise

        return supervise(settings)
    from services.agent_service.server import serve

    asyncio.run(serve(settings))
    return 0


def _invalid_settings(error: ValidationError) -> str:
    """`SWITCHBOARD_AGENT_WORKERS='0': Input should be greater than or equal to 1; ...`"""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc'])}={problem['input']!r}: {problem['msg']}"
        for problem in error.errors()
    )


AGENT_WORKERS_MAX: Final = 64


def _workers_value(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 1 <= value <= AGENT_WORKERS_MAX:
        raise argparse.ArgumentTypeError(f"{value} is not between 1 and {AGENT_WORKERS_MAX}")
    return value


def _run_upload(args: argparse.Namespace) -> int:
    overrides = {"upload_listen": args.listen} if args.listen else {}
    settings = load_settings().model_copy(update=overrides)
    _configure_logging(settings)
    from services.upload_service.server import serve

    asyncio.run(serve(settings))
    return 0


def _run_edge(args: argparse.Namespace) -> int:
    overrides: dict[str, object] = {}
    if args.host:
        overrides["edge_host"] = args.host
    if args.port is not None:
        overrides["edge_port"] = args.port
    if args.agent_address:
        overrides["agent_address"] = args.agent_address
    settings = load_settings().model_copy(update=overrides)
    _configure_logging(settings)
    from services.edge.app import run_edge

    asyncio.run(run_edge(settings))
    return 0


# --------------------------------------------------------------------------- database


async def _migrate_database(settings: Settings, *, check: bool, revision: str) -> int:
    """`switchboard migrate`: 0 done (or current with --check), 1 database unreachable (or a
    migration due with --check), 2 the schema or the URL is not usable by this version."""
    from sqlalchemy.exc import DBAPIError

    from services.agent_service.store import SchemaError, create_store
    from services.agent_service.store.migrate import head_revision

    try:
        store = create_store(settings)
    except ValueError as error:
        print(f"switchboard migrate: {error}", file=sys.stderr)
        return 2
    try:
        if check:
            current, head = await store.schema_revision(), head_revision()
            print(f"{store.url}: schema revision {current or 'none'} (this version needs {head})")
            return 0 if current == head else 1
        before, after = await store.migrate(revision)
    except SchemaError as error:
        print(f"switchboard migrate: {error}", file=sys.stderr)
        return 2
    except (OSError, TimeoutError, DBAPIError) as error:
        reason = error.orig if isinstance(error, DBAPIError) and error.orig else error
        print(f"switchboard migrate: cannot migrate {store.url}: {reason}", file=sys.stderr)
        return 1
    if before == after:
        print(f"{store.url}: schema already at revision {after}")
    else:
        print(f"{store.url}: schema upgraded from {before or 'nothing'} to revision {after}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    """Apply the schema migrations (Alembic) to the configured database."""
    settings = load_settings()
    _configure_logging(settings)
    return asyncio.run(_migrate_database(settings, check=args.check, revision=args.revision))


async def _sweep_bucket(settings: Settings, *, dry_run: bool) -> int:
    """`switchboard sweep`: 0 done, 1 object storage unreachable or refusing."""
    from services.upload_service.quota import open_quota
    from services.upload_service.storage import ObjectStorage
    from services.upload_service.sweep import sweep
    from switchboard.app import SwitchboardError

    try:
        storage = ObjectStorage.from_settings(settings)
        # Removed attachments give their counted bytes back to their tenants' stored bytes.
        quota = await open_quota(settings, application_name="switchboard-sweep")
    except ValueError as error:
        print(f"switchboard sweep: {error}", file=sys.stderr)
        return 2
    try:
        report = await sweep(
            storage, pending_ttl_s=settings.upload_pending_ttl_s, dry_run=dry_run, quota=quota
        )
    except SwitchboardError as error:
        print(f"switchboard sweep: bucket {storage.bucket} at {storage.endpoint}: {error}", file=sys.stderr)
        return 1
    finally:
        await quota.close()
        await storage.close()
    verb = "would remove" if dry_run else "removed"
    for key in report.removed:
        print(f"{verb} {key}")
    for attachment_id in report.indexed:
        print(f"{'would index' if dry_run else 'indexed'} {attachment_id}")
    print(
        f"bucket {storage.bucket}: {verb} {len(report.removed)} keys, "
        f"{'would index' if dry_run else 'indexed'} {len(report.indexed)} attachments"
    )
    return 0


def _sweep(args: argparse.Namespace) -> int:
    """Remove stale uploads and orphaned objects from the attachment bucket once."""
    settings = load_settings()
    _configure_logging(settings)
    return asyncio.run(_sweep_bucket(settings, dry_run=args.dry_run))


# --------------------------------------------------------------------------- administration
# `switchboard usage` and `switchboard limits` work on the database directly, with the operator's
# access (as `switchboard migrate` does), and check their input as the admin service does
# (`services.limits.admin`). `services.limits` is imported only when one of them runs: it loads the
# app API, which costs every other command a second or two.

CLI_ACTOR_TENANT: Final = "*cli*"
"""The audit log's actor tenant for the CLI (no token can carry it: tenant ids start with a letter
or a digit)."""
VIA_CLI: Final = "cli"

LIMIT_FLAGS: Final = {
    "runs_per_user": "responses one user may have running at once",
    "runs_per_tenant": "responses the tenant's users may have running at once",
    "requests_per_minute": "a user's sustained request rate per minute",
    "request_burst": "requests a user may make at once after a pause (0: --requests-per-minute)",
    "tokens_per_day": "model tokens (input + output) the tenant may use per UTC day",
    "upload_bytes_per_day": "bytes one user may upload per UTC day",
    "stored_bytes": "attachment bytes the tenant may keep stored at once",
}
"""Every limit `switchboard limits set` takes (`--runs-per-user N`, ...), in the order and with the
names of `services.limits.NAMES` (a unit test checks that they agree)."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def cli_actor() -> Principal:
    """Who the audit log names for the CLI: the operating system user, with the operator's role."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name and no passwd entry (some containers)
        user = f"uid-{os.getuid()}"
    return Principal(tenant=CLI_ACTOR_TENANT, user=user, role=PLATFORM_ADMIN_ROLE)


def _refuse(command: str, message: str, code: int) -> int:
    print(f"switchboard {command}: {message}", file=sys.stderr)
    return code


def _administer(settings: Settings, command: str, work: Callable[[LimitsStore], Awaitable[None]]) -> int:
    """Run `work` on the limits store of the configured database. 0: done; 1: the database is
    missing, unreachable or not at this version's schema (`switchboard migrate`); 2: the database
    URL or the request is not usable (InvalidRequest)."""
    from sqlalchemy.engine import make_url

    from services.agent_service.store import create_store
    from services.common.database import database_url

    try:
        url = make_url(database_url(settings))
        store = create_store(settings)
    except ValueError as error:
        return _refuse(command, str(error), 2)
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or settings.store_path)
        if not path.exists():  # opening it would create an empty database
            return _refuse(
                command,
                f"no database at {path}: start the agent service once (it creates it) or run "
                "`switchboard migrate`, with the same SWITCHBOARD_DATA_DIR or SWITCHBOARD_DATABASE_URL",
                1,
            )
    return asyncio.run(_administer_store(settings, command, store, work))


async def _administer_store(
    settings: Settings, command: str, store: SqlStore, work: Callable[[LimitsStore], Awaitable[None]]
) -> int:
    from sqlalchemy.exc import DBAPIError

    from services.agent_service.store.migrate import head_revision
    from services.limits import LimitsStore
    from switchboard.app import InvalidRequest, SwitchboardError

    try:
        current = await store.schema_revision()
    except (OSError, TimeoutError, DBAPIError) as error:
        reason = error.orig if isinstance(error, DBAPIError) and error.orig else error
        return _refuse(command, f"cannot read {store.url}: {reason}", 1)
    head = head_revision()
    if current != head:
        return _refuse(
            command,
            f"{store.url} is at schema revision {current or 'none'} and this version needs {head}: "
            "run `switchboard migrate`",
            1,
        )
    limits = LimitsStore(settings, application_name="switchboard-cli")
    await limits.open()
    try:
        await work(limits)
    except InvalidRequest as error:
        return _refuse(command, error.message, 2)
    except SwitchboardError as error:
        return _refuse(command, f"{store.url}: {error.message}", 1)
    finally:
        await limits.close()
    return 0


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], *, text_columns: int) -> list[str]:
    """Aligned columns: the first `text_columns` to the left, the numbers to the right."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[index]) for row in cells) for index in range(len(header))]
    return [
        "  ".join(
            cell.ljust(width) if index < text_columns else cell.rjust(width)
            for index, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in cells
    ]


COUNTER_COLUMNS: Final = (
    "conversations",
    "turns",
    "tool_calls",
    "uploaded_bytes",
    "input_tokens",
    "output_tokens",
)


def usage_report(
    tenant: str, since: str, until: str, rows: Sequence[UsageRow], stored: int
) -> dict[str, Any]:
    """What `switchboard usage --json` prints (the admin service's GetUsageResponse, as JSON)."""
    from services.limits import usage_rows_total

    return {
        "tenant": tenant,
        "since": since,
        "until": until,
        "rows": [
            {"day": row.day, "user": row.user, "model": row.model}
            | {name: getattr(row, name) for name in COUNTER_COLUMNS}
            for row in rows
        ],
        "totals": usage_rows_total(rows),
        "stored_bytes": stored,
    }


def usage_text(report: dict[str, Any]) -> str:
    """`switchboard usage` without --json: one line per day, user and model ('-' is the row that
    counts conversations, turns, tool calls and uploads), the totals and the bytes stored now."""
    lines = [f"usage of tenant {report['tenant']} from {report['since']} to {report['until']} (UTC days)"]
    body: list[list[object]] = [
        [row["day"], row["user"], row["model"] or "-", *(row[name] for name in COUNTER_COLUMNS)]
        for row in report["rows"]
    ]
    totals = report["totals"]
    body.append(["total", "", "", *(totals[name] for name in COUNTER_COLUMNS)])
    lines += _table(["day", "user", "model", *COUNTER_COLUMNS], body, text_columns=3)
    lines.append(f"stored bytes now: {report['stored_bytes']}")
    return "\n".join(lines)


def limits_report(
    tenant: str, defaults: Limits, effective: Limits, overrides: dict[str, int]
) -> dict[str, Any]:
    """What `switchboard limits show --json` prints (the admin service's TenantLimits, as JSON)."""
    return {
        "tenant": tenant,
        "effective": effective.as_dict(),
        "defaults": defaults.as_dict(),
        "overrides": {name: overrides[name] for name in LIMIT_FLAGS if name in overrides},
    }


def limits_text(report: dict[str, Any]) -> str:
    """One line per limit: the effective value, the default and the tenant's override ('-': none)."""
    overrides = report["overrides"]
    body: list[list[object]] = [
        [name, report["effective"][name], report["defaults"][name], overrides.get(name, "-")]
        for name in LIMIT_FLAGS
    ]
    lines = [f"limits of tenant {report['tenant']} (0 means no limit)"]
    lines += _table(["limit", "effective", "default", "override"], body, text_columns=1)
    return "\n".join(lines)


def _print_report(report: dict[str, Any], text: Callable[[dict[str, Any]], str], as_json: bool) -> None:
    print(json.dumps(report, indent=2) if as_json else text(report))


def _usage(args: argparse.Namespace) -> int:
    """Print a tenant's usage per UTC day, user and model."""
    from services.limits import today
    from services.limits.admin import USAGE_READ, checked_tenant, checked_user, usage_period
    from switchboard.app import InvalidRequest

    try:
        tenant = checked_tenant(args.tenant)
        user = checked_user(args.user) if args.user is not None else None
        since, until = usage_period(args.since, args.until, today())
    except InvalidRequest as error:
        return _refuse("usage", error.message, 2)
    settings = load_settings()
    _configure_logging(settings)

    async def work(store: LimitsStore) -> None:
        rows, stored = await store.usage(tenant, user=user, since=since, until=until)
        detail = {"via": VIA_CLI, "user": user, "since": since.isoformat(), "until": until.isoformat()}
        await store.audit(cli_actor(), USAGE_READ, tenant, detail)
        report = usage_report(tenant, since.isoformat(), until.isoformat(), rows, stored)
        _print_report(report, usage_text, args.json)

    return _administer(settings, "usage", work)


def _limits_show(args: argparse.Namespace) -> int:
    """Print a tenant's effective limits, the defaults and its overrides."""
    from services.limits.admin import LIMITS_READ, checked_tenant
    from switchboard.app import InvalidRequest

    try:
        tenant = checked_tenant(args.tenant)
    except InvalidRequest as error:
        return _refuse("limits show", error.message, 2)
    settings = load_settings()
    _configure_logging(settings)

    async def work(store: LimitsStore) -> None:
        effective, overrides = await store.limits(tenant)
        await store.audit(cli_actor(), LIMITS_READ, tenant, {"via": VIA_CLI})
        _print_report(limits_report(tenant, store.defaults, effective, overrides), limits_text, args.json)

    return _administer(settings, "limits show", work)


def _limits_set(args: argparse.Namespace) -> int:
    """Change a tenant's overrides and print its limits afterwards; the audit log gets the change."""
    from services.limits.admin import checked_tenant, limit_changes
    from switchboard.app import InvalidRequest

    values = {name: getattr(args, name) for name in LIMIT_FLAGS if getattr(args, name) is not None}
    try:
        tenant = checked_tenant(args.tenant)
        changes = limit_changes(values, args.clear, reset=args.reset)
    except InvalidRequest as error:
        return _refuse("limits set", error.message, 2)
    settings = load_settings()
    _configure_logging(settings)

    async def work(store: LimitsStore) -> None:
        effective, overrides = await store.set_limits(
            cli_actor(), tenant, changes, reset=args.reset, via=VIA_CLI
        )
        _print_report(limits_report(tenant, store.defaults, effective, overrides), limits_text, args.json)

    return _administer(settings, "limits set", work)


# --------------------------------------------------------------------------- dev stack


def _wait_ready(url: str, timeout_s: float, children: Sequence[subprocess.Popen[bytes]]) -> bool:
    """Poll `url` until it answers 200; False after `timeout_s` or as soon as a child exits."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and all(child.poll() is None for child in children):
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def _wait_listening(host: str, port: int, child: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and child.poll() is None:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)


def _run_dev(args: argparse.Namespace) -> int:
    """Start the whole stack as child processes on embedded defaults.

    The database is migrated first (the embedded SQLite file, or the PostgreSQL database of
    SWITCHBOARD_DATABASE_URL). Without MINIO_ENDPOINT, the embedded S3 server stands in for MinIO
    (see `_start_embedded_s3`); then the upload service, the agent service and the edge, each once
    the one before listens. Object storage stops last, after the services have drained.
    """
    settings = load_settings()
    _configure_logging(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrated = asyncio.run(_migrate_database(settings, check=False, revision="head"))
    if migrated != 0:
        return migrated
    secret = settings.resolve_jwt_secret()
    token = mint_token(
        secret,
        tenant=args.tenant,
        user=args.user,
        role=args.role,
        ttl_s=settings.jwt_max_lifetime_s,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    env = dict(os.environ)
    if args.app:
        env["SWITCHBOARD_APP"] = args.app
    env.setdefault("SWITCHBOARD_CORS_ORIGINS", "*")
    env["SWITCHBOARD_DEV_STACK"] = "true"  # HS256 is expected here: no warning
    env.setdefault("SWITCHBOARD_DEMO_TOKEN", token)
    env.setdefault("SWITCHBOARD_AGENT_ADDRESS", settings.agent_listen)
    env.setdefault("SWITCHBOARD_UPLOAD_ADDRESS", settings.upload_listen)
    python = sys.executable
    children: list[subprocess.Popen[bytes]] = []
    embedded: SeaweedFS | None = None
    storage_note = "MinIO at " + (settings.minio_endpoint or "")
    if not settings.minio_endpoint:
        embedded = _start_embedded_s3(settings.data_dir / "s3", args.s3_port, env)
        if embedded is not None:
            storage_note = f"SeaweedFS at {env['MINIO_ENDPOINT']}, files kept in {embedded.root}"
        else:
            children.append(
                _spawn([python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(args.s3_port)], env)
            )
            env["MINIO_ENDPOINT"] = f"127.0.0.1:{args.s3_port}"
            storage_note = f"moto at {env['MINIO_ENDPOINT']}, in memory: files vanish when it stops"
            _wait_listening("127.0.0.1", args.s3_port, children[-1])
    # Start each service once the one before listens, so readiness probes are not polled into the log.
    for command, listen in (("upload", settings.upload_listen), ("agent", settings.agent_listen)):
        children.append(_spawn([python, "-m", "services.cli", command], env))
        host, _, port = listen.rpartition(":")
        _wait_listening(host if host not in ("", "0.0.0.0", "[::]") else "127.0.0.1", int(port), children[-1])
    children.append(_spawn([python, "-m", "services.cli", "edge"], env))
    base = f"http://{settings.edge_host}:{settings.edge_port}"

    def stop(*_: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if not _wait_ready(f"{base}/readyz", timeout_s=60, children=children):
            print("switchboard dev: the stack did not become ready; see the logs above", file=sys.stderr)
            stop()
            return 1
        body = '{"type":"threads.create","params":{"input":{"content":[{"type":"input_text","text":"Hello! Who is employee E1001?"}],"attachments":[],"inference_options":{}}}}'  # noqa: E501
        print(
            "\nSwitchboard is running.\n"
            f"  edge:          {base}  (ChatKit endpoint {base}/chatkit/api)\n"
            f"  demo page:     {base}/  (the ChatKit UI loads from OpenAI's CDN: needs internet)\n"
            f"  agent (gRPC):  {settings.agent_listen}\n"
            f"  upload (gRPC): {settings.upload_listen}, files in {storage_note}\n"
            f"  dev token:     tenant={args.tenant} user={args.user} role={args.role}\n\n"
            "Try it:\n"
            f"  curl -N {base}/chatkit/api -H 'Authorization: Bearer {token}' "
            f"-H 'Content-Type: application/json' -d '{body}'\n\n"
            "Press Ctrl-C to stop.\n",
            flush=True,
        )
        while all(child.poll() is None for child in children) and (embedded is None or embedded.running()):
            try:
                children[-1].wait(timeout=0.5)
            except Exception:
                continue
        if embedded is not None and not embedded.running():
            print(f"switchboard dev: SeaweedFS exited; see {embedded.log_path}", file=sys.stderr)
    finally:
        stop()
        for child in children:
            try:
                child.wait(timeout=settings.shutdown_grace_s + 5)
            except Exception:
                child.kill()
        if embedded is not None:
            embedded.stop()
    return max((child.returncode or 0) for child in children)


def _start_embedded_s3(root: Path, port: int, env: dict[str, str]) -> SeaweedFS | None:
    """Start SeaweedFS on 127.0.0.1:`port` with its files under `root` and point the services'
    environment at it (endpoint and its generated credentials, which replace any MINIO_ACCESS_KEY
    or MINIO_SECRET_KEY: the embedded server only knows its own).

    None when it cannot start: the reason and a warning are printed, and the caller falls back to
    moto's in-memory server, so `make run` still works, just without persistent files.
    """
    from services.upload_service.embedded_s3 import EmbeddedS3Error, SeaweedFS

    server = SeaweedFS(root, s3_port=port)
    try:
        server.start()
    except EmbeddedS3Error as error:
        print(f"switchboard dev: cannot start the embedded S3 server (SeaweedFS): {error}", file=sys.stderr)
        print(
            "switchboard dev: WARNING: falling back to moto's in-memory S3 server; uploaded files will "
            "NOT persist when the stack stops",
            file=sys.stderr,
        )
        return None
    env["MINIO_ENDPOINT"] = server.endpoint
    env["MINIO_ACCESS_KEY"] = server.credentials.access_key
    env["MINIO_SECRET_KEY"] = server.credentials.secret_key
    return server


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env)


# --------------------------------------------------------------------------- token and chat


def _token(args: argparse.Namespace) -> int:
    settings = load_settings()
    print(
        mint_token(
            settings.resolve_jwt_secret(),
            tenant=args.tenant,
            user=args.user,
            role=args.role,
            ttl_s=min(args.ttl, settings.jwt_max_lifetime_s),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    )
    return 0


def _chat(args: argparse.Namespace) -> int:
    from services.chat_client import chat

    settings = load_settings()
    token = args.token or mint_token(
        settings.resolve_jwt_secret(),
        tenant=args.tenant,
        user=args.user,
        role=args.role,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    address = args.agent_address or settings.agent_address
    message = " ".join(args.message) if args.message else None
    return asyncio.run(
        chat(
            grpc_target(address),
            token,
            thread_id=args.thread,
            message=message,
            locale=args.locale,
            settings=settings,
        )
    )


# --------------------------------------------------------------------------- parser


def _limit_value(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def _limit_name(text: str) -> str:
    name = text.strip().replace("-", "_")
    if name not in LIMIT_FLAGS:
        raise argparse.ArgumentTypeError(f"unknown limit {text!r} (choose from {', '.join(LIMIT_FLAGS)})")
    return name


_ADMIN_NOTE: Final = (
    "Works on the configured database directly (SWITCHBOARD_DATABASE_URL, else the SQLite file in "
    "SWITCHBOARD_DATA_DIR), with the operator's access: no token is needed, and the audit log names "
    f"the operating system user (actor tenant {CLI_ACTOR_TENANT}, role {PLATFORM_ADMIN_ROLE}). "
    "Exit status: 0 done, 1 the database is missing, unreachable or needs `switchboard migrate`, "
    "2 bad usage."
)


def _add_admin_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`switchboard usage` and `switchboard limits show|set`."""
    formatter = argparse.RawDescriptionHelpFormatter
    usage = commands.add_parser(
        "usage",
        help="print a tenant's usage per UTC day, user and model",
        description="Print a tenant's usage, per UTC day, user and model: conversations, turns, tool "
        "calls and uploaded bytes (model '-'), and the model tokens in and out as each model "
        "reported them; then the totals and the attachment bytes the tenant stores now. Numbers are "
        "exact: they are counted in the transactions that store what produced them.\n\n" + _ADMIN_NOTE,
        formatter_class=formatter,
    )
    usage.add_argument("--tenant", required=True, help="the tenant")
    usage.add_argument("--user", help="only this user's usage (default: every user of the tenant)")
    usage.add_argument("--since", metavar="YYYY-MM-DD", help="the first UTC day (default: --until)")
    usage.add_argument(
        "--until", metavar="YYYY-MM-DD", help="the last UTC day, included (default: today); at most 366 days"
    )
    usage.add_argument("--json", action="store_true", help="print JSON (the admin service's GetUsage)")
    usage.set_defaults(func=_usage)

    limits = commands.add_parser(
        "limits",
        help="show or set a tenant's limits (overrides of the SWITCHBOARD_LIMIT_* defaults)",
        description="Show or set a tenant's limits. Every limit has a default from the settings "
        "(SWITCHBOARD_LIMIT_<NAME>, as this command's environment has them: run it with the "
        "services' configuration) and may be overridden per tenant; 0 means no limit. Changes apply "
        "to the next request on every replica.\n\n" + _ADMIN_NOTE,
        formatter_class=formatter,
    )
    actions = limits.add_subparsers(dest="limits_command", required=True, metavar="ACTION")
    show = actions.add_parser(
        "show",
        help="print the effective limits, the defaults and the tenant's overrides",
        description="Print a tenant's effective limits, the defaults and its overrides "
        "('-': the limit follows the default).\n\n" + _ADMIN_NOTE,
        formatter_class=formatter,
    )
    show.add_argument("--tenant", required=True, help="the tenant")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_limits_show)

    change = actions.add_parser(
        "set",
        help="override limits for a tenant, or clear overrides",
        description="Change a tenant's overrides and print its limits afterwards. Limits not named "
        "keep their override (unless --reset). The change and the overrides before and after are "
        "written to the audit log in the same transaction.\n\n"
        "  switchboard limits set --tenant acme --tokens-per-day 2000000\n"
        "  switchboard limits set --tenant acme --clear tokens-per-day\n"
        "  switchboard limits set --tenant acme --reset\n\n" + _ADMIN_NOTE,
        formatter_class=formatter,
    )
    change.add_argument("--tenant", required=True, help="the tenant")
    for name, text in LIMIT_FLAGS.items():
        change.add_argument(
            _flag(name), dest=name, type=_limit_value, metavar="N", help=f"{text} (0: no limit)"
        )
    change.add_argument(
        "--clear",
        nargs="+",
        action="extend",
        default=[],
        type=_limit_name,
        metavar="NAME",
        help="remove these overrides, so the limits follow the default again (e.g. tokens-per-day)",
    )
    change.add_argument(
        "--reset", action="store_true", help="remove every override first (then apply the limits given)"
    )
    change.add_argument("--json", action="store_true", help="print JSON")
    change.set_defaults(func=_limits_set)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchboard",
        description="Switchboard: a self-hosted ChatKit backend as gRPC microservices. "
        "Settings come from environment variables (see the README).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    agent = commands.add_parser("agent", help="run the agent service (gRPC)")
    agent.add_argument("--listen", help="host:port to listen on (SWITCHBOARD_AGENT_LISTEN)")
    agent.add_argument(
        "--app",
        metavar="MODULE:ATTR",
        help="the app to run, e.g. helpdesk_app:app (SWITCHBOARD_APP; default: the ERP demo)",
    )
    agent.add_argument(
        "--workers",
        type=_workers_value,
        metavar="N",
        help=f"worker processes sharing the listen address, 1 to {AGENT_WORKERS_MAX}, e.g. the pod's "
        "CPU limit (SWITCHBOARD_AGENT_WORKERS; default 1: one process, no supervisor)",
    )
    agent.set_defaults(func=_run_agent)

    upload = commands.add_parser("upload", help="run the upload service (gRPC, attachments in MinIO)")
    upload.add_argument("--listen", help="host:port to listen on (SWITCHBOARD_UPLOAD_LISTEN)")
    upload.set_defaults(func=_run_upload)

    migrate = commands.add_parser(
        "migrate",
        help="apply the database schema migrations (run before starting services on PostgreSQL)",
        description="Upgrade the schema of the configured database (SWITCHBOARD_DATABASE_URL, else the "
        "SQLite file) to the newest revision. Safe to run again and from several places at once.",
    )
    migrate.add_argument(
        "--check",
        action="store_true",
        help="change nothing: exit 0 when the schema is current, 1 when it needs `switchboard migrate`",
    )
    migrate.add_argument("--revision", default="head", help="upgrade to this revision (default: head)")
    migrate.set_defaults(func=_migrate)

    sweep = commands.add_parser(
        "sweep",
        help="remove stale uploads and orphaned objects from the attachment bucket",
        description="One sweep of MINIO_BUCKET: attachments never attached and older than "
        "SWITCHBOARD_UPLOAD_PENDING_TTL_S, upload keys nothing reads, objects and thread index "
        "markers without a record. Prints every key it removes.",
    )
    sweep.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
    sweep.set_defaults(func=_sweep)

    _add_admin_commands(commands)

    edge = commands.add_parser("edge", help="run the ChatKit HTTP/SSE edge")
    edge.add_argument("--host", help="interface to bind (SWITCHBOARD_EDGE_HOST)")
    edge.add_argument("--port", type=int, help="port to bind (SWITCHBOARD_EDGE_PORT)")
    edge.add_argument("--agent-address", help="agent service host:port (SWITCHBOARD_AGENT_ADDRESS)")
    edge.set_defaults(func=_run_edge)

    for name, helptext in (
        ("dev", "run the whole stack on one machine with embedded defaults"),
        ("token", "mint a development JWT signed with the configured secret"),
        ("chat", "chat with the agent service from the terminal over gRPC"),
    ):
        sub = commands.add_parser(name, help=helptext, description=helptext)
        sub.add_argument("--tenant", default=DEV_TENANT, help=f"tenant claim (default {DEV_TENANT})")
        sub.add_argument("--user", default=DEV_USER, help=f"user claim, 'sub' (default {DEV_USER})")
        sub.add_argument(
            "--role", default=DEV_ROLE, help=f"role claim: user, hr, admin... (default {DEV_ROLE})"
        )
        if name == "dev":
            sub.add_argument(
                "--app", metavar="MODULE:ATTR", help="the app the agent service runs (SWITCHBOARD_APP)"
            )
            sub.add_argument(
                "--s3-port",
                type=int,
                default=DEV_S3_PORT,
                help=f"port of the embedded S3 server, without MINIO_ENDPOINT (default {DEV_S3_PORT})",
            )
            sub.set_defaults(func=_run_dev)
        elif name == "token":
            sub.add_argument(
                "--ttl",
                type=int,
                default=86_400,
                help="lifetime in seconds (default 86400, at most SWITCHBOARD_JWT_MAX_LIFETIME_S)",
            )
            sub.set_defaults(func=_token)
        else:
            sub.add_argument("--agent-address", help="agent service host:port (SWITCHBOARD_AGENT_ADDRESS)")
            sub.add_argument("--token", help="use this bearer token instead of minting one")
            sub.add_argument("--thread", help="continue this thread instead of starting a new one")
            sub.add_argument("--locale", default="en", help="the user's locale (default en)")
            sub.add_argument("message", nargs="*", help="the message; without one, an interactive prompt")
            sub.set_defaults(func=_chat)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
