"""validate's typed outcome, which every check shares (the GX suite in sentimentops.steps.validate.checks, the
feedback checks in sentimentops.steps.validate.leaks); the text normalisation they share is core.production's."""
from __future__ import annotations

from pydantic import BaseModel, Field

REQUIRED_COLUMNS = ("text", "label")  # the ingest contract (docs/stages.md); extra columns are allowed


class ExpectationOutcome(BaseModel):
    """One expectation evaluated on one split (or, for leakage, on a pair of splits written `train/test`)."""

    name: str = Field(description="Stable short name, e.g. label_balance.")
    split: str
    engine: str = Field(description="great_expectations, or pandas for what GX cannot express directly.")
    expectation: str = Field(description="The GX expectation type or the pandas computation.")
    success: bool
    observed: float | int | str | None = Field(description="The observed value (or count of bad values).")
    expected: str = Field(description="The threshold, in words.")
    message: str = Field(description="What was seen, readable without the report.")


