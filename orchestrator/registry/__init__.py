"""The registry: SQL tables for datasets, jobs, checkpoints (models) and workers."""
