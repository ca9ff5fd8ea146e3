"""The admin service (switchboard.v1.AdminService): usage, per-tenant limits and the audit log.

It runs in the agent service, on its gRPC port and behind the same authentication, and works on
the shared database through a `LimitsStore` that runs its transactions on the thread store's
connections (the agent service opens it at start and closes it after the drain). Who may act on
which tenant and what a request may ask is decided by `services.limits.admin`; this module maps
protobuf to those checks and back.

Rate: every call takes one request of the caller's `requests_per_minute` (the same bucket as its
chat requests), before anything else; past it the call is RESOURCE_EXHAUSTED with a `retry-after`.

Audit: every call that is allowed writes a row to the audit log. A change of limits writes it in the
change's own transaction (`LimitsStore.set_limits`); a read writes it after the read succeeded and
before the answer is sent, so no answer leaves unaudited. Refused calls write no row (a caller
without the role must not be able to write into a tenant's audit log); they are logged as a warning
with the caller and the target in fields of their own (`admin_*`, JSON lines in
`SWITCHBOARD_LOG_FORMAT=json`). Invalid requests change nothing and are logged as every refusal is
(`abort_with`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Final, TypeVar

from google.protobuf.message import Message
from grpc import aio

from services.agent_service import metrics as agent_metrics
from services.common.auth import Principal
from services.common.grpc_auth import current_principal, current_request_id
from services.common.grpc_server import abort_internal, abort_with
from services.limits import Limits, LimitsStore, today, usage_rows_total
from services.limits.admin import (
    AUDIT_READ,
    LIMITS_READ,
    USAGE_READ,
    audit_entries_limit,
    authorize,
    checked_user,
    limit_changes,
    shown,
    usage_period,
)
from switchboard.app import Forbidden, SwitchboardError
from switchboard.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger(__name__)

ADMIN_SERVICE_NAME: Final = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
VIA: Final = "grpc"
"""The audit detail's `via` for calls through this service (the CLI writes "cli")."""

_Reply = TypeVar("_Reply", bound=Message)
Context = aio.ServicerContext[Any, Any]


def limits_to_proto(values: Limits | dict[str, int]) -> admin_pb2.Limits:
    """Every limit of a `Limits`, or only the names a dict of overrides has."""
    return admin_pb2.Limits(**(values.as_dict() if isinstance(values, Limits) else values))


def limits_from_proto(message: admin_pb2.Limits) -> dict[str, int]:
    """The limits a message sets (explicit presence: an unset field is not a change)."""
    return {field.name: int(value) for field, value in message.ListFields()}


def tenant_limits(
    tenant: str, defaults: Limits, effective: Limits, overrides: dict[str, int]
) -> admin_pb2.TenantLimits:
    return admin_pb2.TenantLimits(
        tenant=tenant,
        effective=limits_to_proto(effective),
        defaults=limits_to_proto(defaults),
        overrides=limits_to_proto(overrides),
    )


class AdminService(admin_pb2_grpc.AdminServiceServicer):
    def __init__(self, store: LimitsStore) -> None:
        self._store = store

    async def _call(
        self,
        context: Context,
        method: str,
        tenant: str,
        call: Callable[[Principal, str], Awaitable[_Reply]],
    ) -> _Reply:
        """The boundary of every RPC: the call takes one request of the caller's rate (the bucket
        its chat requests use; refused or not, an admin call is a request), then the caller is
        authorized for the tenant (a refusal is logged with who asked for what), then
        `call(caller, tenant)` runs; domain errors become their status, anything else INTERNAL with
        a generic message."""
        caller = current_principal.get()
        try:
            await self._store.admit_request(caller)
            try:
                allowed = authorize(caller, tenant)
            except Forbidden as refused:
                self._log_refusal(caller, method, tenant or caller.tenant, refused)
                raise
            return await call(caller, allowed)
        except SwitchboardError as error:
            agent_metrics.count_refusal(error)
            await abort_with(context, error)
            raise AssertionError("unreachable") from error
        except Exception as error:
            await abort_internal(context, "AdminService")
            raise AssertionError("unreachable") from error

    @staticmethod
    def _log_refusal(caller: Principal, method: str, tenant: str, refused: Forbidden) -> None:
        log.warning(
            "admin call refused: %s on tenant %s by %s/%s (role %s): %s",
            method,
            shown(tenant),
            caller.tenant,
            caller.user,
            caller.role,
            refused.message,
            extra={
                "admin_method": method,
                "admin_target_tenant": tenant[:128],
                "admin_actor_tenant": caller.tenant,
                "admin_actor_user": caller.user,
                "admin_actor_role": caller.role,
                "admin_outcome": "PERMISSION_DENIED",
            },
        )

    def _audited(self, detail: dict[str, Any]) -> dict[str, Any]:
        return {"via": VIA, "request_id": current_request_id.get(), **detail}

    async def GetUsage(
        self, request: admin_pb2.GetUsageRequest, context: Context
    ) -> admin_pb2.GetUsageResponse:
        async def call(caller: Principal, tenant: str) -> admin_pb2.GetUsageResponse:
            user = checked_user(request.user) if request.HasField("user") else None
            since, until = usage_period(request.since, request.until, today())
            rows, stored = await self._store.usage(tenant, user=user, since=since, until=until)
            await self._store.audit(
                caller,
                USAGE_READ,
                tenant,
                self._audited({"user": user, "since": since.isoformat(), "until": until.isoformat()}),
            )
            return admin_pb2.GetUsageResponse(
                tenant=tenant,
                since=since.isoformat(),
                until=until.isoformat(),
                rows=[
                    admin_pb2.UsageRow(
                        day=row.day,
                        user=row.user,
                        model=row.model,
                        conversations=row.conversations,
                        turns=row.turns,
                        tool_calls=row.tool_calls,
                        uploaded_bytes=row.uploaded_bytes,
                        input_tokens=row.input_tokens,
                        output_tokens=row.output_tokens,
                    )
                    for row in rows
                ],
                totals=admin_pb2.UsageTotals(**usage_rows_total(rows)),
                stored_bytes=stored,
            )

        return await self._call(context, "GetUsage", request.tenant, call)

    async def GetLimits(
        self, request: admin_pb2.GetLimitsRequest, context: Context
    ) -> admin_pb2.GetLimitsResponse:
        async def call(caller: Principal, tenant: str) -> admin_pb2.GetLimitsResponse:
            effective, overrides = await self._store.limits(tenant)
            await self._store.audit(caller, LIMITS_READ, tenant, self._audited({}))
            return admin_pb2.GetLimitsResponse(
                limits=tenant_limits(tenant, self._store.defaults, effective, overrides)
            )

        return await self._call(context, "GetLimits", request.tenant, call)

    async def SetLimits(
        self, request: admin_pb2.SetLimitsRequest, context: Context
    ) -> admin_pb2.SetLimitsResponse:
        async def call(caller: Principal, tenant: str) -> admin_pb2.SetLimitsResponse:
            changes = limit_changes(limits_from_proto(request.values), request.clear, reset=request.reset_all)
            effective, overrides = await self._store.set_limits(
                caller, tenant, changes, reset=request.reset_all, via=VIA
            )
            log.info(
                "limits of tenant %s set by %s/%s (role %s): %s",
                tenant,
                caller.tenant,
                caller.user,
                caller.role,
                overrides or "defaults",
            )
            return admin_pb2.SetLimitsResponse(
                limits=tenant_limits(tenant, self._store.defaults, effective, overrides)
            )

        return await self._call(context, "SetLimits", request.tenant, call)

    async def ListAuditLog(
        self, request: admin_pb2.ListAuditLogRequest, context: Context
    ) -> admin_pb2.ListAuditLogResponse:
        async def call(caller: Principal, tenant: str) -> admin_pb2.ListAuditLogResponse:
            limit = audit_entries_limit(request.limit)
            entries = await self._store.audit_entries(tenant, limit)
            await self._store.audit(caller, AUDIT_READ, tenant, self._audited({"limit": limit}))
            response = admin_pb2.ListAuditLogResponse()
            for entry in entries:
                message = response.entries.add(
                    actor_tenant=entry.actor_tenant,
                    actor_user=entry.actor_user,
                    actor_role=entry.actor_role,
                    action=entry.action,
                    tenant=entry.tenant,
                    detail=json.dumps(entry.detail, sort_keys=True),
                )
                message.at.FromDatetime(datetime.fromtimestamp(entry.at, UTC))
            return response

        return await self._call(context, "ListAuditLog", request.tenant, call)


__all__ = ["ADMIN_SERVICE_NAME", "AdminService", "limits_from_proto", "limits_to_proto"]
