"""Buckets (S3, GCS, Azure Blob) mounted by the server with rclone, for storage connections."""
