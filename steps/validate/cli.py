"""validate: a Great Expectations suite run on every split of the ingested dataset, plus leakage checks.

`sentimentops validate --dataset DIR --out OUT` writes report.md/.html/.json and manifest.json. Exit 0 when every
expectation passes; 1 when the dataset fails them (the reports and the manifest are written first) or cannot be
validated at all (missing folder, file or column: nothing written); 2 for a bad flag, setting or profile key.
The computation lives in sentimentops.steps.validate.checks, the rendering in sentimentops.steps.validate.report.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from sentimentops.steps.core.config import parse_settings
from sentimentops.steps.core.errors import DataError, stage_main
from sentimentops.steps.core.logs import get_logger
from sentimentops.steps.core.manifests import write_manifest
from sentimentops.steps.validate.checks import (
    ValidateSettings,
    ValidationResult,
    load_frames,
    validate_dataset,
)
from sentimentops.steps.validate.report import write_reports

STEP = "validate"
log = get_logger(__name__)


class ExpectationsFailed(DataError):
    """The dataset was read and validated, and failed at least one expectation (the reports say which)."""


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", type=Path, required=True, help="Ingest output folder (<split>.parquet).")
    parser.add_argument("--out", type=Path, required=True, help="Output folder for the reports and manifest.")


def _summary(result: ValidationResult, out: Path) -> str:
    if result.success:
        return (f"validate: all {len(result.outcomes)} expectations passed on "
                f"{', '.join(f'{s} ({n} rows)' for s, n in result.rows.items())}; report {out / 'report.html'}")
    lines = [f"validate: dataset FAILED {len(result.failures)} of {len(result.outcomes)} expectations:"]
    lines += [f"  [{o.split}] {o.name}: {o.message}" for o in result.failures]
    lines.append(f"report: {out / 'report.md'}")
    return "\n".join(lines)


def _metrics(result: ValidationResult) -> dict[str, float]:
    return {
        "rows": sum(result.rows.values()),
        "expectations": len(result.outcomes),
        "failed_expectations": len(result.failures),
        **{f"rows_{s}": n for s, n in result.rows.items()},
        **{f"{o.name}_{o.split.replace('/', '_')}": o.observed for o in result.outcomes
           if o.name in {"overlap_share", "duplicate_share", "label_balance"} and isinstance(o.observed, float)},
    }


@stage_main("validate")
def main(argv: list[str] | None = None) -> int:
    settings, args = parse_settings(ValidateSettings, argv, prog="sentimentops validate", description=__doc__,
                                    add_arguments=_arguments)
    out: Path = args.out
    frames = load_frames(args.dataset, settings.splits)  # UnusableInput (a DataError): exit 1, nothing written
    result = validate_dataset(frames, settings)
    files = write_reports(result, out)
    # The manifest is written last: its presence marks a complete output folder (a failed verdict included).
    write_manifest(out, STEP, inputs={"dataset": args.dataset}, params=settings.thresholds(),
                   metrics=_metrics(result), outputs={name: name for name in files})
    if not result.success:
        log.error("%s", _summary(result, out))
        raise ExpectationsFailed(f"the dataset failed {len(result.failures)} of {len(result.outcomes)} "
                                 f"expectations; report {out / 'report.md'}")
    log.info("%s", _summary(result, out))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    sys.exit(main())
