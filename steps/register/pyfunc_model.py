"""The MLflow pyfunc logged at registration (MLflow "models from code": this file is copied into the model, so
loading it needs no cloudpickle). It wraps the saved Hugging Face folder. It imports the contract (labels, token
limit, artifact key), so the environment that loads it needs this package installed: the register and serve images
and the project's venv do.

Input: a DataFrame with a `text` column (or a list of strings). Output: a DataFrame with `label` (negative/positive)
and `probability` (of positive).
"""
from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from sentimentops.steps.core.contract import MAX_TOKENS, MODEL_DIR_KEY, keep_head_tail, labels_of


class SentimentPyfunc(PythonModel):
    def load_context(self, context) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        folder = context.artifacts[MODEL_DIR_KEY]
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        import torch

        texts = model_input["text"].tolist() if isinstance(model_input, pd.DataFrame) else list(model_input)
        self.tokenizer.model_max_length = 10**9  # the cut is the contract's head + tail rule, as the predictor's
        ids = [keep_head_tail(x, MAX_TOKENS) for x in self.tokenizer(texts, truncation=False)["input_ids"]]
        batch = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        with torch.inference_mode():
            probs = torch.softmax(self.model(**batch).logits.float(), dim=-1)[:, 1].numpy()
        return pd.DataFrame({"label": labels_of(probs), "probability": probs})


mlflow.models.set_model(SentimentPyfunc())
