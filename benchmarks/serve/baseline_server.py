"""The baseline of the serving benchmark: the common recipe, a transformers pipeline called per request in a
one-worker FastAPI server (uvicorn), over the same Hugging Face model folder. Truncation at 512 tokens is on
(without it a long review crashes the pipeline: kserve issue 3438). Same body and answer as V1 /predict.

    .venv/bin/python benchmarks/serve/baseline_server.py --model-dir DIR --port 8091
"""
from __future__ import annotations

import argparse

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

from sentimentops.steps.core.contract import MAX_TOKENS, label_of


class Body(BaseModel):
    instances: list[str]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--port", type=int, default=8091)
    args = parser.parse_args()
    from transformers import pipeline

    classify = pipeline("text-classification", model=args.model_dir, tokenizer=args.model_dir, device="cpu",
                        truncation=True, max_length=MAX_TOKENS, top_k=None)
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ready"}

    @app.post("/predict")
    def predict(body: Body):  # a plain `def`: FastAPI runs it in its thread pool, one pipeline call per request
        out = []
        for scores in classify(body.instances):
            p = next(s["score"] for s in scores if s["label"].lower() in ("positive", "label_1"))
            out.append({"label": label_of(p), "probability": p})
        return {"predictions": out}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", workers=1)


if __name__ == "__main__":
    main()
