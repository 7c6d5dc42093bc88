"""Progressive delivery: roll a registered model out as a canary, judge it from Prometheus, promote or roll back.

policy (pure judgement) <- analysis (PromQL) <- controller (the state machine) -> a target: kserve (the
InferenceService through the Kubernetes API) or local (two predictor processes behind a weighted router).
"""
