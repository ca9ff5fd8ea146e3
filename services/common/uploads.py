"""What the upload service and its clients agree on beyond the messages of upload.proto."""

from __future__ import annotations

from typing import Final

UPLOAD_ACCEPTED_KEY: Final = "x-upload-accepted"
"""Initial metadata of `UploadService.Upload`, sent once the `info` message passed its checks
(name, type, declared size, the user's limit) and before any chunk is read. A client that waits
for it before sending chunks never races a refusal of `info`: without the key, the call was
refused, and its status says why. Clients that do not wait work as well."""

WITHIN_REQUEST_KEY: Final = "x-switchboard-within-request"
"""Request metadata of a call made within a user request that another service admitted already
(the agent service storing an image it generated during a turn): the upload service takes no
request of the user's rate for it. Byte limits apply all the same. The edge never forwards
client headers as metadata, so browsers cannot set it."""
