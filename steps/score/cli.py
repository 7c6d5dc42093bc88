"""`sentimentops score`: batch scoring with the champion (or a named version), docs/batch-scoring.md.

  score --input FILE|DIR|gs://... --output PATH|gs://...   all rows in this process
  score plan --input ... --shards N --out DIR              shard descriptors (a JSON list, for Argo withParam)
                                                           and the model version, resolved once
  score run --shard DESCRIPTOR --output ... --model-uri models:/NAME/N
                                                           one shard -> <output>.parts/part-I-of-N.parquet
  score join --plan DIR --output ...                       the parts, in input order -> the output + a summary

The model: --model-uri (default models:/<registered_model>@champion), --model-version N, or --model-dir FOLDER.
Exit status (steps/core/errors.py): 1 for unusable input (no such file, no text column, an empty or unreadable
file, rows without text, an unknown model version), 2 for a bad flag, 3 for anything else (retried by Argo).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import ClassVar

from pydantic import Field

from sentimentops.steps.core.config import CommonSettings, parse_settings
from sentimentops.steps.core.errors import DataError, UsageError, stage_main
from sentimentops.steps.core.logs import emit, get_logger
from sentimentops.steps.score import core, files
from sentimentops.steps.score.core import ModelRef, Scorer, Shard

log = get_logger("sentimentops.score")
SUBCOMMANDS = ("plan", "run", "join")
SHARDS_FILE, MODEL_URI_FILE, MODEL_VERSION_FILE, SUMMARY_FILE = "shards.json", "model-uri", "model-version", \
    "summary.json"


class ScoreSettings(CommonSettings):
    section: ClassVar[str] = "score"

    text_column: str = Field("text", description="Input column holding the review text.")
    id_column: str = Field("id", description="Input column identifying a row, copied to the output; when an input "
                           "lacks it, rows are identified by their number across all inputs (column `row`).")
    backend: str = Field("auto", description="auto (torch on a GPU, else the ONNX export the CPU predictor would "
                         "serve: int8 or fp32), onnx-int8, onnx-fp32 or torch.")
    threads: int = Field(0, ge=0, description="CPU threads for the model (0: every core this process may use).")
    batch_size: int = Field(0, ge=0, description="Reviews per model call (0: 256 on a GPU, 16 on a CPU).")


def _model_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model-uri", help="models:/NAME@ALIAS or models:/NAME/VERSION (default: "
                       "models:/<registered_model>@champion)")
    group.add_argument("--model-version", help="a version number of the registered model")
    group.add_argument("--model-dir", type=Path, help="a model folder (registered pyfunc or Hugging Face folder)")


def _whole(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="a parquet/CSV/JSONL file, a folder of them, or gs://B/P")
    parser.add_argument("--output", required=True, help="the parquet file to write (a path or gs://B/KEY)")
    _model_flags(parser)


def _plan(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--input", required=True, help="a parquet/CSV/JSONL file, a folder of them, or gs://B/P")
    parser.add_argument("--shards", type=int, required=True, help="how many shards (pods) at most")
    parser.add_argument("--out", type=Path, required=True, help=f"folder for {SHARDS_FILE}, {MODEL_URI_FILE}, "
                        f"{MODEL_VERSION_FILE}")
    _model_flags(parser)


def _run(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--shard", required=True, help="one descriptor from `score plan` (JSON)")
    parser.add_argument("--output", required=True, help="the final output; the part goes to <output>.parts/")
    _model_flags(parser)


def _join(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", type=Path, required=True, help="`score plan`'s --out folder")
    parser.add_argument("--output", required=True, help="the parquet file to write (a path or gs://B/KEY)")
    parser.add_argument("--out", type=Path, help=f"folder for {SUMMARY_FILE}")


def _model(settings: ScoreSettings, args: argparse.Namespace) -> ModelRef:
    uri = args.model_uri or f"models:/{settings.registered_model}@champion"
    return core.resolve_model(settings, uri=uri, version=args.model_version, folder=args.model_dir)


def _scorer(settings: ScoreSettings, ref: ModelRef) -> Scorer:
    return Scorer(core.model_folder(settings, ref), settings.backend, settings.threads, settings.batch_size)


def _parse(sub: str | None, argv: list[str]) -> tuple[ScoreSettings, argparse.Namespace]:
    adders = {None: _whole, "plan": _plan, "run": _run, "join": _join}
    prog = "sentimentops score" + (f" {sub}" if sub else "")
    return parse_settings(ScoreSettings, argv, prog=prog, description=__doc__, add_arguments=adders[sub])


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def whole(settings: ScoreSettings, args: argparse.Namespace) -> dict:
    (shard,) = core.plan(args.input, 1, settings.text_column, settings.id_column)
    ref = _model(settings, args)
    frame = core.score_shard(shard, _scorer(settings, ref), ref, settings.text_column)
    files.write_parquet(frame, args.output)
    return core.summary(frame, args.output)


def plan(settings: ScoreSettings, args: argparse.Namespace) -> list[Shard]:
    shards = core.plan(args.input, args.shards, settings.text_column, settings.id_column)
    ref = _model(settings, args)
    out: Path = args.out
    # The version is fixed here, once: every shard scores with it even if the alias moves during the fan-out.
    _write_text(out / MODEL_URI_FILE, ref.uri + "\n")
    _write_text(out / MODEL_VERSION_FILE, ref.version + "\n")
    _write_text(out / SHARDS_FILE, json.dumps([s.to_json() for s in shards]) + "\n")
    log.info("%d rows in %d shard(s), model %s version %s", sum(s.rows for s in shards), len(shards), ref.name,
             ref.version)
    return shards


def run(settings: ScoreSettings, args: argparse.Namespace) -> str:
    shard = Shard.from_json(args.shard)
    ref = _model(settings, args)
    frame = core.score_shard(shard, _scorer(settings, ref), ref, settings.text_column)
    return files.write_parquet(frame, core.part_location(args.output, shard))


def join(settings: ScoreSettings, args: argparse.Namespace) -> dict:
    try:
        shards = [Shard.from_json(s) for s in json.loads((args.plan / SHARDS_FILE).read_text())]
    except FileNotFoundError as err:
        raise DataError(f"--plan {args.plan}: no {SHARDS_FILE} (the --out folder of `score plan`)") from err
    frame = core.join_parts(args.output, shards)
    files.write_parquet(frame, args.output)
    result = core.summary(frame, args.output) | {"shards": len(shards)}
    if args.out is not None:
        _write_text(args.out / SUMMARY_FILE, json.dumps(result, indent=2) + "\n")
    return result


@stage_main("score")
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    sub = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    settings, args = _parse(sub, argv[1:] if sub else argv)
    if sub is None:
        emit(json.dumps(whole(settings, args)))
    elif sub == "plan":
        emit(json.dumps([s.to_json() for s in plan(settings, args)]))
    elif sub == "run":
        emit(run(settings, args))
    elif sub == "join":
        emit(json.dumps(join(settings, args)))
    else:  # pragma: no cover - SUBCOMMANDS is exhaustive
        raise UsageError(f"unknown subcommand {sub}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
