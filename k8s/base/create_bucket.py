"""Create Switchboard's attachments bucket and its lifecycle rule (the `switchboard-bucket` Job).

Runs in the switchboard image with the upload service's MINIO_* settings, through the same code the
upload service uses (`ObjectStorage.from_settings(...).ensure_bucket()`), then sets one lifecycle
rule: incomplete multipart uploads are aborted a day after they started (a crashed upload pod can
leave one behind). Idempotent; exits non-zero on failure so that the Job retries with back-off.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from minio import Minio
from minio.commonconfig import ENABLED, Filter
from minio.lifecycleconfig import AbortIncompleteMultipartUpload, LifecycleConfig, Rule

from services.common.config import load_settings
from services.upload_service.storage import ObjectStorage

RULE_ID = "switchboard-abort-incomplete-uploads"

log = logging.getLogger("switchboard.bucket")


def lifecycle_rule() -> LifecycleConfig:
    return LifecycleConfig(
        [
            Rule(
                ENABLED,
                rule_filter=Filter(prefix=""),
                rule_id=RULE_ID,
                abort_incomplete_multipart_upload=AbortIncompleteMultipartUpload(days_after_initiation=1),
            )
        ]
    )


async def main() -> int:
    settings = load_settings()
    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    storage = ObjectStorage.from_settings(settings)
    try:
        await storage.ensure_bucket()
    finally:
        await storage.close()
    assert settings.minio_endpoint is not None  # from_settings refuses an unset endpoint
    client = Minio(
        settings.minio_endpoint,
        access_key=settings.minio_access_key,
        secret_key=settings.minio_secret_key,
        secure=settings.minio_secure,
        region=settings.minio_region,
    )
    await asyncio.to_thread(client.set_bucket_lifecycle, settings.minio_bucket, lifecycle_rule())
    log.info("bucket %s ready at %s with rule %s", settings.minio_bucket, settings.minio_endpoint, RULE_ID)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
