"""`sentimentops lineage`: the promise on the README's first lines as a command. Given a model version, an alias or
a predictor's answer, it prints the version, its MLflow run and metrics, the dataset (DVC md5, remote, rows per
split), the git commit and the images each stage ran in; `--json` for machines.

    sentimentops lineage --model-version 1
    sentimentops lineage --alias champion --json
    curl ... :predict | sentimentops lineage --response -
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sentimentops.steps.core.config import CommonSettings, parse_settings
from sentimentops.steps.core.errors import UsageError, stage_main
from sentimentops.steps.core.logs import emit
from sentimentops.steps.core.tracking import configure
from sentimentops.steps.lineage.gather import as_json, find_version, gather, render_text, response_version


def add_version_flags(parser: argparse.ArgumentParser) -> None:
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model-version", help="The registered version's number.")
    which.add_argument("--alias", help="A registry alias: champion, challenger.")
    which.add_argument("--response", help="A predictor's JSON answer (a file, or - for stdin): its model_version.")


def _arguments(parser: argparse.ArgumentParser) -> None:
    add_version_flags(parser)
    parser.add_argument("--json", action="store_true", help="Print the lineage as JSON.")


def chosen_version(args: argparse.Namespace, settings: CommonSettings) -> tuple[str, str | None, str | None]:
    """(registered model, version, alias) from the flags; a --response gives the version its answer names."""
    if args.response is None:
        return settings.registered_model, args.model_version, args.alias
    source = args.response
    if source != "-" and not Path(source).is_file():
        raise UsageError(f"--response {source}: no such file")
    _, version = response_version(sys.stdin.read() if source == "-" else Path(source).read_text())
    # The answer's model_name is the served name (serve --model-name), not necessarily the registry's: the
    # registered model comes from the settings, as for the other flags.
    return settings.registered_model, version, None


@stage_main("lineage")
def main(argv: list[str] | None = None) -> int:
    settings, args = parse_settings(CommonSettings, argv, prog="sentimentops lineage", description=__doc__,
                                    add_arguments=_arguments)
    name, version, alias = chosen_version(args, settings)
    client = configure(settings)
    lineage = gather(client, find_version(client, name, version=version, alias=alias))
    emit(as_json(lineage) if args.json else render_text(lineage))
    return 0
