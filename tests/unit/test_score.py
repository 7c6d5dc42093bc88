"""Batch scoring's core (steps/score): deterministic shards, order kept through plan -> run -> join, bad input as a
one-line data error with nothing written, and the real ONNX path on a tiny model (an fp32 export, as evaluate
builds it) agreeing with the predictor's own backend."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sentimentops.steps.core.errors import DataError, UsageError
from sentimentops.steps.score import cli, core, files
from sentimentops.steps.score.core import Range, Shard, plan_shards


@pytest.fixture(autouse=True)
def row_blocks(monkeypatch):
    """One-row blocks for these small inputs (shards of a few rows); the real BLOCK is tested on its own below."""
    monkeypatch.setattr(core, "BLOCK", 1)


def test_shards_start_at_block_boundaries_and_batches_never_cross_a_block(monkeypatch):
    """int8's activation scales depend on a batch's rows: a review must meet the same batch-mates however the
    input is sharded, so shards start at a multiple of BLOCK and a batch stays inside one block."""
    monkeypatch.setattr(core, "BLOCK", 64)
    planned = plan_shards([("f", 150), ("g", 50)], 3)
    assert [(s.offset, s.rows) for s in planned] == [(0, 64), (64, 64), (128, 72)]
    assert len(plan_shards([("f", 100)], 8)) == 2  # no more shards than blocks

    batches: list[list[int]] = []
    scorer = core.Scorer.__new__(core.Scorer)
    scorer.on_gpu, scorer.batch_size, scorer.threads, scorer.backend_name = False, 16, 1, "recorder"

    class Encoded:
        def __init__(self, n: int):
            self.length = n

    class Encoder:
        def encode(self, texts):
            return [Encoded(len(t)) for t in texts]

        def pad(self, rows):
            return (rows,)

    def backend(rows):
        batches.append([id(r) for r in rows])
        return np.full(len(rows), 0.5)

    scorer.encoder, scorer.backend = Encoder(), backend
    texts = ["x" * (1 + i % 7) for i in range(72)]
    scorer.score(texts, first_row=128)
    # rows 128..191 are block 2, rows 192..199 block 3: no batch holds rows of both
    assert len(batches) == 4 + 1 and sorted(len(b) for b in batches) == [8, 16, 16, 16, 16]


@pytest.mark.parametrize("sizes, shards", [([10], 3), ([4, 0, 7, 1], 5), ([3], 8), ([100, 1], 1), ([2, 2], 4)])
def test_shards_cover_every_row_once_in_order_and_nearly_equal(sizes, shards):
    files_ = [(f"f{i}", n) for i, n in enumerate(sizes)]
    planned = plan_shards(files_, shards)
    rows = [(r.file, i) for s in planned for r in s.ranges for i in range(r.start, r.stop)]
    assert rows == [(f, i) for f, n in files_ for i in range(n)]  # every row once, input order
    assert len(planned) == min(shards, sum(sizes)) and all(s.rows >= 1 for s in planned)
    assert max(s.rows for s in planned) - min(s.rows for s in planned) <= 1
    assert [s.offset for s in planned] == list(np.cumsum([0] + [s.rows for s in planned])[:-1])
    assert plan_shards(files_, shards) == planned  # deterministic


def test_a_shard_descriptor_round_trips_through_json_and_a_bad_one_is_a_usage_error():
    shard = Shard(1, 3, 13, 13, (Range("/a.parquet", 13, 25), Range("/b.jsonl", 0, 1)), "id")
    assert Shard.from_json(json.dumps(shard.to_json())) == shard
    assert shard.part_name == "part-00001-of-00003.parquet"
    with pytest.raises(UsageError, match="not a shard descriptor"):
        Shard.from_json('{"index": 1}')
    with pytest.raises(UsageError, match="at least 1"):
        plan_shards([("a", 3)], 0)


@pytest.fixture()
def inputs(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    pd.DataFrame({"id": ["a0", "a1", "a2"], "text": ["good film", "bad film", "fine"]}).to_parquet(
        folder / "a.parquet")
    pd.DataFrame({"id": ["b0", "b1"], "text": ["awful", "great"]}).to_csv(folder / "b.csv", index=False)
    (folder / "c.jsonl").write_text('{"id": "c0", "text": "superb"}\n')
    (folder / "notes.txt").write_text("not an input")
    return folder


def test_a_folder_is_its_parquet_csv_and_jsonl_files_in_name_order(inputs):
    assert [Path(f).name for f in files.list_inputs(str(inputs))] == ["a.parquet", "b.csv", "c.jsonl"]
    planned = core.plan(str(inputs), 2, "text", "id")
    assert [s.rows for s in planned] == [3, 3] and {s.id_column for s in planned} == {"id"}
    (inputs / "d.csv").write_text("text\nno id here\n")
    assert {s.id_column for s in core.plan(str(inputs), 2, "text", "id")} == {""}  # row numbers for all


@pytest.mark.parametrize("name, body, message", [
    ("missing.csv", None, "no such file or folder"),
    ("empty.csv", "", "empty file"),
    ("header.csv", "id,text\n", "empty file"),
    ("other.csv", "id,review\n1,good\n", "no 'text' column"),
    ("broken.parquet", "not parquet", "cannot read it as parquet"),
    ("broken.jsonl", "{not json\n", "cannot read it as jsonl"),
    ("reviews.txt", "plain text", "not a parquet, CSV or JSONL file"),
])
def test_bad_input_is_a_data_error_naming_the_file(tmp_path, name, body, message):
    path = tmp_path / name
    if body is not None:
        path.write_text(body)
    with pytest.raises(DataError, match=message):
        core.plan(str(path), 2, "text", "id")


def test_rows_without_text_are_a_data_error_naming_them(tmp_path):
    pd.DataFrame({"text": ["ok", None, " ", "fine"]}).to_parquet(tmp_path / "x.parquet")
    (shard,) = core.plan(str(tmp_path / "x.parquet"), 1, "text", "id")
    with pytest.raises(DataError, match=r"2 row\(s\) without text in 'text' \(rows 1, 2"):
        core.shard_rows(shard, "text")


def test_a_folder_without_inputs_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no parquet, CSV or JSONL files"):
        files.list_inputs(str(tmp_path))


# ---- the real model path -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory, tiny_model_dir) -> Path:
    """The tiny model as a plain Hugging Face folder with its fp32 export in onnx/ (what read_model_folder finds)."""
    from sentimentops.steps.evaluate.onnx_export import export_fp32

    folder = tmp_path_factory.mktemp("score-model") / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "onnx").mkdir()
    export_fp32(folder, folder / "onnx" / "model.onnx")
    return folder


def test_plan_run_join_equals_one_pass_in_input_order_and_nothing_half_written(inputs, onnx_model, tmp_path, home,
                                                                                 capsys):
    model = ["--model-dir", str(onnx_model), "--threads", "1"]
    whole, fanned, plan_dir = tmp_path / "whole.parquet", tmp_path / "out" / "fanned.parquet", tmp_path / "plan"
    assert cli.main(["--input", str(inputs), "--output", str(whole), *model]) == 0
    assert cli.main(["plan", "--input", str(inputs), "--shards", "3", "--out", str(plan_dir), *model]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == json.loads((plan_dir / "shards.json").read_text()) and len(printed) == 3
    assert (plan_dir / "model-uri").read_text().strip() == str(onnx_model)
    for item in reversed(printed):  # any order: the parts carry their place
        assert cli.main(["run", "--shard", json.dumps(item), "--output", str(fanned), *model]) == 0
    assert cli.main(["join", "--plan", str(plan_dir), "--output", str(fanned), "--out", str(tmp_path / "s")]) == 0
    one, joined = pd.read_parquet(whole), pd.read_parquet(fanned)
    pd.testing.assert_frame_equal(one, joined)
    assert joined["id"].tolist() == ["a0", "a1", "a2", "b0", "b1", "c0"]
    assert list(joined.columns) == ["id", "label", "probability", "model_name", "model_version"]
    assert set(joined["model_version"]) == {"unversioned"}
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["rows"] == 6 and summary["shards"] == 3 and sum(summary["labels"].values()) == 6
    assert not [p for p in tmp_path.rglob("*.tmp")]  # every write renamed into place

    # A missing part fails the join with a data error, and the output is not rewritten.
    (Path(f"{fanned}.parts") / "part-00001-of-00003.parquet").unlink()
    fanned.unlink()
    assert cli.main(["join", "--plan", str(plan_dir), "--output", str(fanned)]) == 1
    assert not fanned.exists()


def test_the_onnx_path_answers_what_the_predictors_backend_answers(onnx_model):
    from sentimentops.steps.core.backends import OnnxBackend, TextEncoder

    texts = ["a wonderful, moving film", "dull and far too long " * 40, "meh"]
    scorer = core.Scorer(onnx_model, threads=1, batch_size=2)
    assert scorer.backend_name == "onnx-fp32" and not scorer.on_gpu
    encoder = TextEncoder(onnx_model)
    backend = OnnxBackend(onnx_model / "onnx" / "model.onnx", onnx_model, "onnx-fp32", threads=1)
    expected = np.concatenate([backend(*encoder.pad(encoder.encode([t]))) for t in texts])
    np.testing.assert_allclose(scorer.score(texts), expected, atol=1e-5)


def test_the_gpu_path_answers_what_the_torch_backend_answers(onnx_model, monkeypatch):
    """The GPU path (chunks through core.scoring.predict_proba, length-sorted batches) run on this CPU: the same
    probabilities as the torch backend's batch call; on CUDA the same code runs in bf16."""
    texts = ["a wonderful, moving film", "dull and far too long " * 40, "meh", "fine"]
    scorer = core.Scorer(onnx_model, backend="torch", threads=1, batch_size=2)
    assert scorer.backend_name == "torch" and not scorer.on_gpu
    expected = scorer.score(texts)
    monkeypatch.setattr(core, "GPU_CHUNK", 3)  # two chunks: the progress steps and the reassembly are exercised
    np.testing.assert_allclose(scorer._score_gpu(texts, "gpu path"), expected, atol=1e-5)


def test_a_bad_input_exits_1_and_writes_nothing(tmp_path, inputs, onnx_model, home):
    (tmp_path / "in.csv").write_text("review\ngreat\n")
    out = tmp_path / "out.parquet"
    assert cli.main(["--input", str(tmp_path / "in.csv"), "--output", str(out), "--model-dir", str(onnx_model)]) == 1
    assert not out.exists()
    assert cli.main(["--input", str(inputs), "--output", str(out), "--model-uri", "runs:/x"]) == 2
    assert cli.main(["--input", str(inputs), "--output", str(out), "--model-version", "7"]) == 1  # none registered
    assert not out.exists()


# ---- gs:// on the real emulator (google-cloud-storage with STORAGE_EMULATOR_HOST, as in the cluster) ----------------


def test_gcs_inputs_parts_and_output(gcs, inputs, tmp_path):
    for path in sorted(inputs.iterdir()):
        files.write_bytes(path.read_bytes(), f"{gcs}/reviews/{path.name}")
    files.write_bytes(b"x", f"{gcs}/reviews/deeper/z.csv")  # not directly under the prefix
    listed = files.list_inputs(f"{gcs}/reviews")
    assert listed == [f"{gcs}/reviews/a.parquet", f"{gcs}/reviews/b.csv", f"{gcs}/reviews/c.jsonl"]
    assert files.list_inputs(f"{gcs}/reviews/b.csv") == [f"{gcs}/reviews/b.csv"]
    planned = core.plan(f"{gcs}/reviews", 2, "text", "id")
    assert [s.rows for s in planned] == [3, 3]
    _, ids, texts = core.shard_rows(planned[1], "text")
    assert ids == ["b0", "b1", "c0"] and texts == ["awful", "great", "superb"]

    ref = core.ModelRef("sentiment", "3", "models:/sentiment/3")
    for shard in planned:
        _, ids, _ = core.shard_rows(shard, "text")
        frame = core.results_frame("id", ids, np.linspace(0.1, 0.9, len(ids)), ref)
        files.write_parquet(frame, core.part_location(f"{gcs}/out/scores.parquet", shard))
    joined = core.join_parts(f"{gcs}/out/scores.parquet", planned)
    assert files.write_parquet(joined, f"{gcs}/out/scores.parquet") == f"{gcs}/out/scores.parquet"
    assert files.read_part(f"{gcs}/out/scores.parquet")["id"].tolist() == ["a0", "a1", "a2", "b0", "b1", "c0"]
    with pytest.raises(DataError, match="part missing"):
        core.join_parts(f"{gcs}/elsewhere/scores.parquet", planned)
    with pytest.raises(DataError, match="no parquet, CSV or JSONL files"):
        files.list_inputs(f"{gcs}/nothing-here")
