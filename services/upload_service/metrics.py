"""The upload service's metrics (Prometheus, see services/common/metrics.py).

- `switchboard_upload_bytes_total`: bytes of direct uploads stored (two-phase uploads go from the
  browser to object storage with a presigned URL and are not seen here)
- `switchboard_upload_files_total{method="direct"|"presigned"}`: attachments stored (direct) or
  created for a presigned upload
- `switchboard_upload_refusals_total{reason}`: uploads and attachment creations refused, by reason:
  `too_large`, `content_mismatch` (the bytes are not of the declared type), `invalid` (name, type
  not accepted, size), `unavailable` (object storage or the database down), the limit's name for a
  limit (`upload_bytes_per_day`, `stored_bytes`, `requests_per_minute`), `uploads_in_progress`
  (too many at once for the user), else the gRPC status name in lower case
"""

from __future__ import annotations

from typing import Final

import grpc
from prometheus_client import Counter

from services.common.errors import grpc_status
from services.limits import LimitReached
from services.upload_service.attachments import TooManyUploads
from services.upload_service.validation import ContentMismatch
from switchboard.app import SwitchboardError

UPLOAD_BYTES: Final = Counter("switchboard_upload_bytes_total", "Bytes of direct uploads stored")
UPLOAD_FILES: Final = Counter("switchboard_upload_files_total", "Attachments stored or created", ["method"])
DIRECT: Final = UPLOAD_FILES.labels("direct")
PRESIGNED: Final = UPLOAD_FILES.labels("presigned")
REFUSALS: Final = Counter("switchboard_upload_refusals_total", "Uploads refused, by reason", ["reason"])

_REASONS: Final = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: "too_large",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid",
    grpc.StatusCode.UNAVAILABLE: "unavailable",
}


def refusal_reason(error: SwitchboardError) -> str:
    # attachments.py turns a ContentMismatch into InvalidRequest (`raise ... from None` keeps it as
    # the context, hidden from tracebacks)
    if isinstance(error.__context__, ContentMismatch):
        return "content_mismatch"
    if isinstance(error, LimitReached):
        return error.limit
    if isinstance(error, TooManyUploads):
        return "uploads_in_progress"
    code = grpc_status(error)
    return _REASONS.get(code, code.name.lower())


def count_refusal(error: SwitchboardError) -> None:
    REFUSALS.labels(refusal_reason(error)).inc()
