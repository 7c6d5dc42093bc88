"""Lineage commands: `sentimentops lineage` (what a model version traces back to) and `sentimentops data pull` (the
exact dataset of a version, restored from its DVC remote)."""
