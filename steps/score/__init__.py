"""Batch scoring: `sentimentops score` (docs/batch-scoring.md)."""
