"""The validate stage's pure core: its settings, the typed results, the Great Expectations suite and the leakage
checks. `validate_dataset(frames, settings) -> ValidationResult`; `load_frames` reads the ingest output.

Both the CLI (sentimentops.steps.validate.cli) and the renderer (sentimentops.steps.validate.report) import this
module, and it imports neither: the imports point one way (cli -> report -> checks -> leaks -> outcomes).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
from pydantic import BaseModel, Field, model_validator

from sentimentops.steps.core.config import CommonSettings
from sentimentops.steps.core.errors import DataError
from sentimentops.steps.core.production import PRODUCTION_SPLIT, normalised
from sentimentops.steps.validate.leaks import run_no_leak, run_production, run_provenance
from sentimentops.steps.validate.outcomes import REQUIRED_COLUMNS, ExpectationOutcome

# Derived columns handed to GX so it can express length statistics and duplicates; dunder names avoid clashes.
_LENGTH, _NORMALISED = "__text_length", "__text_normalised"
_GX = "great_expectations"


class ValidateSettings(CommonSettings):
    """Thresholds of the dataset suite; the defaults are sized on the full IMDB dataset (25k train / 25k test)."""

    section: ClassVar[str] = "validate"

    splits: list[str] = Field(
        ["train", "validation", "test"], description="Splits to validate: `<split>.parquet` in the dataset folder."
    )
    min_rows: int = Field(
        100, ge=0, description="Minimum rows per split. 100: the label-balance bound is noise below that "
        "(std of a mean of n fair labels = 0.5/sqrt(n) = 0.05 at n=100).",
    )
    label_mean_min: float = Field(
        0.4, ge=0, le=1, description="Lower bound of mean(label) per split: IMDB is 50/50; 90/10 must fail."
    )
    label_mean_max: float = Field(0.6, ge=0, le=1, description="Upper bound of mean(label) per split.")
    text_length_min: int = Field(1, ge=0, description="Minimum characters per text (IMDB's shortest: 32).")
    text_length_max: int = Field(
        100_000, ge=1, description="Maximum characters per text (IMDB's longest: 13,704; more means a file dump)."
    )
    typical_length_min: float = Field(
        10, ge=0, description="Lower bound for both mean and median text length (IMDB: mean 1,310, median 970)."
    )
    typical_length_max: float = Field(20_000, ge=0, description="Upper bound for both mean and median text length.")
    max_duplicate_share: float = Field(
        0.02, ge=0, le=1, description="Max share of rows repeating an earlier text of the same split, whitespace-"
        "normalised (IMDB: train 96/25,000 = 0.4%, test 199/25,000 = 0.8%).",
    )
    max_overlap_share: float = Field(
        0.01, ge=0, le=1, description="Max share of the second split's rows whose text also appears in the first "
        "(IMDB: 123 of 25,000 test texts are in train = 0.5%).",
    )
    overlap_pairs: list[tuple[str, str]] = Field(
        [("train", "test"), ("validation", "test")],
        description="(reference, checked) split pairs for the leakage check: test texts seen in train/validation.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ValidateSettings:
        if self.label_mean_min > self.label_mean_max:
            raise ValueError("label_mean_min must not exceed label_mean_max")
        if self.text_length_min > self.text_length_max or self.typical_length_min > self.typical_length_max:
            raise ValueError("length bounds: min must not exceed max")
        unknown = {s for pair in self.overlap_pairs for s in pair} - set(self.splits)
        if unknown:
            raise ValueError(f"overlap_pairs name splits not in splits: {sorted(unknown)}")
        return self

    def thresholds(self) -> dict[str, Any]:
        """The stage's own settings (not the common ones), as recorded in the manifest's params."""
        own = [f for f in type(self).model_fields if f not in CommonSettings.model_fields]
        return self.model_dump(mode="json", include=set(own))


class ValidationResult(BaseModel):
    success: bool
    rows: dict[str, int] = Field(description="Rows per split.")
    outcomes: list[ExpectationOutcome]
    thresholds: dict[str, Any] = Field(default_factory=dict, description="The settings the suite ran with.")

    @property
    def failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success]

    def by_split(self) -> dict[str, list[ExpectationOutcome]]:
        grouped: dict[str, list[ExpectationOutcome]] = {}
        for outcome in self.outcomes:
            grouped.setdefault(outcome.split, []).append(outcome)
        return grouped


def _with_derived(frame: pd.DataFrame) -> pd.DataFrame:
    if "text" not in frame.columns:
        return frame  # columns_present fails; the text expectations report "not evaluated"
    lengths = frame["text"].map(lambda v: len(v) if isinstance(v, str) else None).astype("float64")
    return frame.assign(**{_LENGTH: lengths, _NORMALISED: normalised(frame["text"])})


def _suite(s: ValidateSettings) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(name, expected in words, GX expectation class, kwargs) for every per-split expectation."""
    between = f"between {s.typical_length_min:g} and {s.typical_length_max:g} characters"
    typical = {"column": _LENGTH, "min_value": s.typical_length_min, "max_value": s.typical_length_max}
    return [
        ("columns_present", f"includes {', '.join(REQUIRED_COLUMNS)}", "ExpectTableColumnsToMatchSet",
         {"column_set": list(REQUIRED_COLUMNS), "exact_match": False}),
        ("row_count", f">= {s.min_rows} rows", "ExpectTableRowCountToBeBetween", {"min_value": s.min_rows}),
        # StringDtype: ingest may hand over pandas' string dtype instead of object columns of str.
        ("text_type", "str values", "ExpectColumnValuesToBeInTypeList",
         {"column": "text", "type_list": ["str", "StringDtype"]}),
        ("text_not_null", "no nulls", "ExpectColumnValuesToNotBeNull", {"column": "text"}),
        ("text_not_blank", "a non-whitespace character in every text", "ExpectColumnValuesToMatchRegex",
         {"column": "text", "regex": r"\S"}),
        ("text_length", f"between {s.text_length_min} and {s.text_length_max} characters each",
         "ExpectColumnValueLengthsToBeBetween",
         {"column": "text", "min_value": s.text_length_min, "max_value": s.text_length_max}),
        ("text_length_mean", between, "ExpectColumnMeanToBeBetween", typical),
        ("text_length_median", between, "ExpectColumnMedianToBeBetween", typical),
        # share of unique (normalised) texts = 1 - duplicate share; reported below as the duplicate share.
        ("duplicate_share", f"<= {s.max_duplicate_share:g}", "ExpectColumnProportionOfUniqueValuesToBeBetween",
         {"column": _NORMALISED, "min_value": 1 - s.max_duplicate_share}),
        ("label_type", "integer dtype", "ExpectColumnValuesToBeInTypeList",
         {"column": "label", "type_list": ["int8", "int16", "int32", "int64", "Int64Dtype"]}),
        ("label_not_null", "no nulls", "ExpectColumnValuesToNotBeNull", {"column": "label"}),
        ("label_in_set", "in {0, 1}", "ExpectColumnValuesToBeInSet", {"column": "label", "value_set": [0, 1]}),
        ("label_balance", f"mean between {s.label_mean_min:g} and {s.label_mean_max:g}",
         "ExpectColumnMeanToBeBetween",
         {"column": "label", "min_value": s.label_mean_min, "max_value": s.label_mean_max}),
    ]


def _plain(value: Any) -> float | int | str | None:
    """GX observed values (numpy scalars, column lists) as JSON-safe scalars."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, bool | int | str) or value is None:
        return value
    return ", ".join(map(str, value)) if isinstance(value, list | tuple) else str(value)


def _errors(exception_info: dict[str, Any] | None) -> list[str]:
    # GX nests the info per metric ({metric id: info}) when a metric failed, else holds one info dict.
    infos = [v for v in (exception_info or {}).values() if isinstance(v, dict)] or [exception_info or {}]
    return [str(i.get("exception_message")) for i in infos if i.get("raised_exception")]


def _outcome(name: str, split: str, expected: str, kind: str, gx_result: Any) -> ExpectationOutcome:
    result: dict[str, Any] = gx_result.result or {}
    made = {"name": name, "split": split, "engine": _GX, "expectation": kind, "expected": expected}
    if errors := _errors(gx_result.exception_info):
        return ExpectationOutcome(**made, success=False, observed=None, message=f"not evaluated: {errors[0]}")
    if "observed_value" in result:
        value = result["observed_value"]
        if name == "columns_present":  # hide the derived columns this module added
            value = [c for c in value if c not in (_LENGTH, _NORMALISED)]
        observed = _plain(value)
        if name == "duplicate_share" and isinstance(observed, float | int):
            observed = round(1 - observed, 6)
        message = f"observed {observed}, expected {expected}"
    else:
        observed = int(result.get("unexpected_count") or 0)
        total = int(result.get("element_count") or 0)
        examples = [repr(v)[:40] for v in (result.get("partial_unexpected_list") or [])[:3]]
        message = (f"{observed} of {total} values unexpected ({observed / max(total, 1):.2%}), "
                   f"e.g. {', '.join(examples)}; expected {expected}") if observed else f"all {total} values ok"
    return ExpectationOutcome(**made, success=bool(gx_result.success), observed=observed, message=message)


def run_suite(frames: dict[str, pd.DataFrame], settings: ValidateSettings) -> list[ExpectationOutcome]:
    """The GX suite on each split, with an ephemeral context (nothing is written to disk)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # no usage statistics from inside the cluster
    import great_expectations as gx  # ~2.7 s import: deferred so --help and the usage and input errors stay fast
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # tqdm bars would flood Argo logs
    specs = _suite(settings)
    suite = gx.ExpectationSuite(name="sentiment_dataset")
    for name, _, kind, kwargs in specs:
        suite.add_expectation(getattr(gxe, kind)(meta={"name": name}, **kwargs))
    source = context.data_sources.add_pandas("dataset")
    outcomes = []
    for split, frame in frames.items():
        definition = source.add_dataframe_asset(split).add_batch_definition_whole_dataframe("all")
        batch = definition.get_batch(batch_parameters={"dataframe": _with_derived(frame)})
        results = {r.expectation_config.meta["name"]: r for r in batch.validate(suite).results}
        outcomes += [_outcome(name, split, expected, kind, results[name]) for name, expected, kind, _ in specs]
    return outcomes


def run_overlap(
    reference: str, ref_frame: pd.DataFrame, checked: str, chk_frame: pd.DataFrame, settings: ValidateSettings
) -> ExpectationOutcome:
    """Leakage: share of `checked` rows whose normalised text also appears in `reference`.

    Computed with pandas: GX could only say it as ExpectColumnValuesToNotBeInSet(value_set=<every reference
    text>), which embeds the whole reference split (25k reviews, ~33 MB for IMDB) in the suite and its result.
    """
    made = {"name": "overlap_share", "split": f"{reference}/{checked}", "engine": "pandas",
            "expectation": f"share of {checked} rows whose whitespace-normalised text appears in {reference}",
            "expected": f"<= {settings.max_overlap_share:g}"}
    if "text" not in ref_frame.columns or "text" not in chk_frame.columns:
        return ExpectationOutcome(**made, success=False, observed=None, message="not evaluated: no text column")
    seen = set(normalised(ref_frame["text"]).dropna())
    texts = normalised(chk_frame["text"])
    hits = texts.notna() & texts.isin(seen)
    share = round(float(hits.mean()), 6) if len(texts) else 0.0
    message = (f"{int(hits.sum())} of {len(texts)} {checked} rows ({share:.2%}; {texts[hits].nunique()} distinct "
               f"texts) also in {reference}; expected <= {settings.max_overlap_share:.2%}")
    return ExpectationOutcome(**made, success=share <= settings.max_overlap_share, observed=share, message=message)


def validate_dataset(frames: dict[str, pd.DataFrame], settings: ValidateSettings) -> ValidationResult:
    """Runs the GX suite on each configured split, then the cross-split leakage checks; where ingest merged
    feedback, the provenance and no-leak checks, and the production slice's own (when `frames` holds one)."""
    missing = [s for s in settings.splits if s not in frames]
    if missing:
        raise ValueError(f"frames lack the configured splits {missing} (have {sorted(frames)})")
    outcomes = run_suite({s: frames[s] for s in settings.splits}, settings)
    for reference, checked in settings.overlap_pairs:
        outcomes.append(run_overlap(reference, frames[reference], checked, frames[checked], settings))
    checked_splits = [*settings.splits, *([PRODUCTION_SPLIT] if PRODUCTION_SPLIT in frames else [])]
    if PRODUCTION_SPLIT in frames:
        outcomes += run_production(frames[PRODUCTION_SPLIT])
    outcomes += run_provenance({s: frames[s] for s in checked_splits})
    outcomes += run_no_leak({s: frames[s] for s in checked_splits})
    return ValidationResult(
        success=all(o.success for o in outcomes),
        rows={s: len(frames[s]) for s in checked_splits},
        outcomes=outcomes,
        thresholds=settings.thresholds(),
    )


class UnusableInput(DataError):
    """The dataset folder cannot be validated at all (missing folder, file or column; not parquet): exit 1 with
    no report, as opposed to a dataset that fails its expectations (exit 1 after the reports are written)."""


def load_frames(dataset: Path, splits: Iterable[str]) -> dict[str, pd.DataFrame]:
    """The configured splits, and the production slice when ingest wrote one (it is optional: no feedback, or too
    little for a slice)."""
    if not dataset.is_dir():
        raise UnusableInput(f"dataset folder {dataset} does not exist")
    frames = {}
    splits = list(splits)
    optional = [PRODUCTION_SPLIT] if PRODUCTION_SPLIT not in splits else []
    for split in [*splits, *optional]:
        path = dataset / f"{split}.parquet"
        if split in optional and not path.is_file():
            continue
        if not path.is_file():
            raise UnusableInput(f"{path} is missing (expected {', '.join(f'{s}.parquet' for s in splits)})")
        try:
            frame = pd.read_parquet(path)
        except (OSError, ValueError) as err:  # pyarrow raises ArrowInvalid (a ValueError) on a non-parquet file
            raise UnusableInput(f"{path} is not a readable parquet file: {err}") from err
        absent = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if absent:
            raise UnusableInput(f"{path} lacks column(s) {absent} (has {list(frame.columns)})")
        frames[split] = frame
    return frames
