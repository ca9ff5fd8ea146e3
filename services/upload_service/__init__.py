"""The upload service: ChatKit attachments, bytes and records, in S3-compatible object storage.

Modules: `server` (gRPC wiring, `build_server`, `serve`), `attachments` (the operations, scoped by
caller), `validation` (names, types, sizes, content sniffing), `records` (the bucket layout and the
attachment records), `storage` (`ObjectStorage`, an asyncio facade over the synchronous minio SDK),
`sweep` (stale uploads and orphaned objects, periodically and via `switchboard sweep`), `quota`
(the upload limits and byte accounting, in the database the agent service uses).
The service keeps no state of its own: records live in the bucket next to the bytes, the limits'
counts in the shared database, so replicas can be added freely.
"""
