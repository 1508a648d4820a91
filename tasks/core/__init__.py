"""Shared by every stage: config, storage, S3, manifests and lineage, the SQL loader."""
