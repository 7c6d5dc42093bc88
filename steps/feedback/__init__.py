"""Feedback labels from outside the predictor: `sentimentops feedback import FILE` (steps/feedback/cli.py)."""
