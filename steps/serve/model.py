"""The KServe predictor: loads a Hugging Face model folder and answers V1 requests with typed predictions.

V1 request: `{"instances": ["text", ...]}` or `{"instances": [{"text": "..."}, ...]}`.
V1 answer:  `{"predictions": [{"label": "positive", "probability": 0.97, "model_name": "sentiment",
              "model_version": "3"}, ...]}` (probability is P(positive), a number, never a stringified dict).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kserve
from kserve.errors import InvalidInput

log = logging.getLogger("sentimentops.serve")
MAX_TOKENS = 512  # DistilBERT's position embeddings: longer inputs are truncated, never an error (kserve issue 3438)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    run_id: str = ""


def parse_instances(payload: Any) -> list[str]:
    """V1 body -> texts, or InvalidInput (400) with a message saying what is wrong."""
    if not isinstance(payload, dict) or "instances" not in payload:
        raise InvalidInput('expected a JSON object with "instances": ["text", ...]')
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidInput('"instances" must be a non-empty list')
    texts = []
    for i, item in enumerate(instances):
        text = item.get("text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise InvalidInput(f'instance {i}: expected a string or {{"text": "..."}}, got {type(text).__name__}')
        if not text.strip():
            raise InvalidInput(f"instance {i}: text is empty")
        texts.append(text)
    return texts


class SentimentModel(kserve.Model):
    def __init__(self, name: str, model_dir: Path, info: ModelInfo):
        super().__init__(name)
        self.model_dir = Path(model_dir)
        self.info = info
        self.ready = False

    def load(self) -> bool:
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(self.model_dir).eval()
        self._torch = torch
        self.predict_texts(["warm-up: the first inference allocates buffers"])  # ready only after it ran
        self.ready = True
        log.info("loaded %s version %s from %s", self.info.name, self.info.version, self.model_dir)
        return self.ready

    def predict_texts(self, texts: list[str]) -> list[dict[str, Any]]:
        batch = self.tokenizer(texts, truncation=True, max_length=MAX_TOKENS, padding=True, return_tensors="pt")
        with self._torch.inference_mode():
            probs = self._torch.softmax(self.model(**batch).logits.float(), dim=-1)[:, 1].tolist()
        return [{"label": "positive" if p >= 0.5 else "negative", "probability": round(float(p), 6),
                 "model_name": self.info.name, "model_version": self.info.version} for p in probs]

    async def predict(self, payload, headers=None, response_headers=None) -> dict[str, Any]:
        return {"predictions": self.predict_texts(parse_instances(payload))}
