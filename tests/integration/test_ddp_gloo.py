"""DDP on CPU: torchrun starts 2 processes over gloo on the same code path as a multi-GPU run.

torchrun runs THIS file as its worker script (the `__main__` block below): each rank calls
sentimentops.steps.train.loop.train
exactly as the train step does, which joins the process group from torchrun's environment.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from sentimentops.steps.core.client import free_port
from sentimentops.steps.core.processes import run

REPO = Path(__file__).resolve().parents[2]
# dropout off: with it each rank draws its own masks, and the comparison with one process could not be exact
CONFIG = {"epochs": 2, "batch_size": 4, "max_length": 16, "log_every": 2, "learning_rate": 2e-3}


def synthetic(n: int = 64) -> tuple[list[list[int]], list[int]]:
    """Lengths 3..8: with length_multiple 8 all fall in one bucket, and 64 rows make 8 global batches of 8, so
    both ranks always hold 4 rows and the mean of the two ranks' losses is the loss over the global batch."""
    gen = np.random.default_rng(0)
    ids = [[2, *gen.integers(5, 60, size=int(gen.integers(1, 7))).tolist(), 3] for _ in range(n)]
    labels = [int(5 in row or 6 in row) for row in ids]
    return ids, labels


def build_model(out: Path) -> Path:
    import torch
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=64, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=32,
                           pad_token_id=0, dropout=0.0, attention_dropout=0.0, seq_classif_dropout=0.0)
    DistilBertForSequenceClassification(cfg).save_pretrained(out)
    return out


def run_training(model_dir: Path, out: Path, batch_size: int, checkpoint_dir: Path | None) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification

    from sentimentops.steps.train.loop import LoopConfig, train

    torch.set_num_threads(1)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    ids, labels = synthetic()
    cfg = LoopConfig(**{**CONFIG, "batch_size": batch_size, "length_multiple": 8})
    res = train(model, ids, labels, cfg, pad_id=0, device="cpu", checkpoint_dir=checkpoint_dir, progress=False)
    rank = int(os.environ.get("RANK", "0"))
    torch.save(model.state_dict(), out / f"weights_rank{rank}.pt")
    (out / f"result_rank{rank}.json").write_text(json.dumps(res.__dict__, default=str))


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_gloo_ranks_train_like_one_process_with_the_global_batch(tmp_path):
    import torch
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("this torch build has no gloo backend")
    model_dir = build_model(tmp_path / "model")
    ddp_out, ckpt = tmp_path / "ddp", tmp_path / "ckpt"
    ddp_out.mkdir()
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(Path(__file__)),
           str(model_dir), str(ddp_out), str(ckpt)]
    proc = run(cmd, timeout=240, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]

    r0, r1 = (json.loads((ddp_out / f"result_rank{r}.json").read_text()) for r in (0, 1))
    assert r0 == r1  # every rank returns the same result
    assert r0["world_size"] == 2 and r0["steps"] == 16 and r0["epochs_completed"] == 2
    w0, w1 = (torch.load(ddp_out / f"weights_rank{r}.pt") for r in (0, 1))
    assert all(torch.equal(w0[k], w1[k]) for k in w0)  # DDP keeps the replicas identical
    assert (ckpt / "last.pt").exists() and torch.load(ckpt / "last.pt", weights_only=False)["world_size"] == 2

    # one process with the global batch (2 x 4) follows the same plan and the same averaged gradients
    single_out = tmp_path / "single"
    single_out.mkdir()
    run_training(model_dir, single_out, batch_size=8, checkpoint_dir=None)
    ws = torch.load(single_out / "weights_rank0.pt")
    for k in w0:
        torch.testing.assert_close(w0[k], ws[k], rtol=1e-4, atol=1e-5, msg=k)


if __name__ == "__main__":  # a torchrun worker
    sys.path.insert(0, str(REPO))
    run_training(Path(sys.argv[1]), Path(sys.argv[2]), batch_size=4, checkpoint_dir=Path(sys.argv[3]))
