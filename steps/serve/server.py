"""`sentimentops serve`: start the KServe model server over a model folder or a registered MLflow model.

`--model-uri models:/sentiment@champion` resolves the alias in the registry, downloads the pyfunc's Hugging Face
folder and serves it with its registered version; `--model-dir DIR` serves a folder (in the cluster, the storage
initializer's /mnt/models) with the version given by `--model-version` / SENTIMENTOPS_MODEL_VERSION.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from steps.config import CommonSettings, load_settings
from steps.serve.model import ModelInfo, SentimentModel


class ServeSettings(CommonSettings):
    section = "serve"
    host: str = "127.0.0.1"
    port: int = 8080


def resolve(uri: str, settings: CommonSettings, cache: Path) -> tuple[Path, ModelInfo]:
    """`models:/name@alias` or `models:/name/N` -> (local folder, info with the concrete version)."""
    from steps.tracking import configure, download_model_dir

    match = re.fullmatch(r"models:/([^/@]+)(?:@([\w-]+)|/(\d+))", uri)
    if not match:
        raise ValueError(f"unsupported model URI {uri!r}: use models:/NAME@ALIAS or models:/NAME/VERSION")
    name, alias, number = match.groups()
    client = configure(settings)
    version = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    folder = download_model_dir(settings, f"models:/{name}/{version.version}", cache / f"{name}-{version.version}")
    return folder, ModelInfo(name=name, version=str(version.version), run_id=version.run_id or "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sentimentops serve", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", type=Path)
    source.add_argument("--model-uri")
    parser.add_argument("--model-name", default="sentiment")
    parser.add_argument("--model-version", default=os.environ.get("SENTIMENTOPS_MODEL_VERSION", "unversioned"))
    parser.add_argument("--port", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = load_settings(ServeSettings, {"port": args.port})
    if args.model_uri:
        from mlflow.exceptions import MlflowException

        try:
            folder, info = resolve(args.model_uri, settings, settings.home / "serving-cache")
        except (MlflowException, OSError, ValueError, KeyError) as err:  # no such alias/model/artifact: say so
            print(f"serve: cannot resolve {args.model_uri}: {err}", file=sys.stderr)
            return 2
        info = ModelInfo(name=args.model_name, version=info.version, run_id=info.run_id)
    else:
        folder, info = args.model_dir, ModelInfo(name=args.model_name, version=args.model_version)
    import kserve

    model = SentimentModel(args.model_name, folder, info)
    model.load()
    kserve.ModelServer(http_port=settings.port, enable_grpc=False, workers=1).start([model])
    return 0
