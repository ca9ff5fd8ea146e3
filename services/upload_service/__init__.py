"""The upload service: attachments in MinIO (arrives with the uploads issue)."""
