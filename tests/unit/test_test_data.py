"""tests/testdata.py: where the tests' real data comes from (precedence, cache hit, offline -> a skip reason that
says what to do), the README's sampling recipe, atomic writes, and the CLI's offline path. No network: the hub is
a closed local port or an injected probe."""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import testdata

CLOSED = "http://127.0.0.1:1"  # nothing listens on port 1: connection refused at once, like a machine without a route


def populate(root: Path, files=testdata.ALL_FILES) -> Path:
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"text": ["good film", "bad film"], "label": [1, 0]}).to_parquet(root / name)
    return root


def never(*_):
    raise AssertionError("must not reach for the network")


@pytest.fixture()
def place(tmp_path):
    """A repo checkout with an (empty) shared folder beside it, an XDG cache and an env mapping using them."""
    repo = tmp_path / "main"
    repo.mkdir()
    shared = tmp_path / "shared" / "data"
    cache = tmp_path / "xdg" / "sentimentops" / "test-data"
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "HF_HUB_OFFLINE": "1"}
    return {"repo": repo, "shared": shared, "cache": cache, "env": env, "tmp": tmp_path}


def resolve(place, files=testdata.ALL_FILES, probe=never, build=never):
    return testdata.resolve(files, env=place["env"], repo=place["repo"], probe=probe, build=build)


def test_the_cache_folder_follows_xdg(tmp_path, monkeypatch):
    assert testdata.cache_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "sentimentops" / "test-data"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert testdata.cache_dir({}) == tmp_path / "home" / ".cache" / "sentimentops" / "test-data"
    assert testdata.shared_dir(tmp_path / "main") == tmp_path / "shared" / "data"


def test_an_explicit_folder_wins_over_shared_and_cache(place):
    populate(place["shared"]), populate(place["cache"])
    mine = populate(place["tmp"] / "mine")
    place["env"][testdata.ENV] = str(mine)
    assert resolve(place) == testdata.Resolution(mine, testdata.ENV)


def test_an_explicit_folder_without_the_files_skips_and_never_falls_back(place):
    # shared and cache are complete: an explicit setting still means "this folder", not "any folder"
    populate(place["shared"]), populate(place["cache"])
    place["env"][testdata.ENV] = "/nonexistent"
    found = resolve(place)
    assert found.root is None
    assert f"{testdata.ENV}=/nonexistent has no imdb/sample_train.parquet, imdb/sample_test.parquet" in found.reason
    assert "make test-data" in found.reason


def test_shared_wins_over_the_cache_and_each_file_set_is_resolved_on_its_own(place):
    populate(place["shared"], testdata.IMDB_FILES)  # a shared copy without Rotten Tomatoes
    populate(place["cache"])
    assert resolve(place, testdata.IMDB_FILES) == testdata.Resolution(place["shared"], "shared")
    assert resolve(place, testdata.RT_FILES) == testdata.Resolution(place["cache"], "cache")
    assert resolve(place) == testdata.Resolution(place["cache"], "cache")


def test_a_cache_hit_asks_no_network(place):
    populate(place["cache"])
    assert resolve(place) == testdata.Resolution(place["cache"], "cache")  # probe and build would raise


def test_offline_skips_with_what_is_missing_where_it_looked_and_how_to_fix_it(place):
    populate(place["cache"], testdata.RT_FILES)
    found = resolve(place, probe=lambda endpoint: f"the Hugging Face hub is unreachable ({endpoint})")
    assert found.root is None
    reason = found.reason
    assert reason.startswith("test data missing: imdb/sample_train.parquet, imdb/sample_test.parquet in neither")
    assert str(place["shared"]) in reason and str(place["cache"]) in reason
    assert "the Hugging Face hub is unreachable (https://huggingface.co)" in reason
    assert "`make test-data`" in reason and testdata.ENV in reason


def test_online_builds_the_cache_once_and_uses_it(place):
    calls = []

    def build(out, env):
        calls.append((out, env))
        populate(out)

    found = resolve(place, probe=lambda _: None, build=build)
    assert found == testdata.Resolution(place["cache"], "hub")
    assert calls == [(place["cache"], place["env"])]


def test_a_failed_build_is_in_the_reason(place):
    found = resolve(place, probe=lambda _: None, build=lambda out, env: "HTTPError: 503 Service Unavailable")
    assert found.root is None
    assert "building it from the Hugging Face hub failed: HTTPError: 503 Service Unavailable" in found.reason


def test_the_build_child_runs_without_the_offline_switches_and_reports_why_it_failed(place):
    # The real child process: the offline switches are gone in it (else it would not even try), the hub (a closed
    # port here) refuses, and its one line comes back for the skip reason.
    env = {**place["env"], "HF_DATASETS_OFFLINE": "1", "HF_ENDPOINT": CLOSED, "PATH": "/usr/bin:/bin"}
    error = testdata.build_in_child(place["cache"], env)
    assert error is not None
    assert error.startswith(f"test data: cannot build {place['cache']}: the Hugging Face hub is unreachable "
                            "(127.0.0.1:1:"), error
    assert not place["cache"].exists()


def test_the_cli_is_a_no_op_when_the_folder_is_complete_and_fails_clearly_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", CLOSED)
    assert testdata.main(["--out", str(populate(tmp_path / "full"))]) == 0
    assert "nothing to build" in capsys.readouterr().out
    assert testdata.main(["--out", str(tmp_path / "empty")]) == 1
    assert "the Hugging Face hub is unreachable (127.0.0.1:1:" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()


def test_the_sample_recipe_is_seeded_balanced_and_shuffled():
    frame = pd.DataFrame({"text": [f"r{i}" for i in range(100)], "label": [0] * 60 + [1] * 40})
    sample = testdata.balanced_sample(frame, 10)
    assert len(sample) == 20 and sample["label"].sum() == 10
    assert sample["text"].is_unique
    assert sample.equals(testdata.balanced_sample(frame, 10))  # seeded
    assert sample["label"].tolist() != sorted(sample["label"])  # shuffled, labels mixed
    assert not sample.equals(testdata.balanced_sample(frame, 10, seed=43))


def test_the_recipe_reproduces_the_shared_samples():
    """shared/data/README.md's samples, redrawn from its full splits: the recipe the hub build uses is the same."""
    imdb = testdata.shared_dir() / "imdb"
    if not (imdb / "train.parquet").is_file():
        pytest.skip(f"the full IMDB splits are not at {imdb} (an optional local copy)")
    for split, n in testdata.SAMPLES.items():
        drawn = testdata.balanced_sample(pd.read_parquet(imdb / f"{split}.parquet"), n)
        pd.testing.assert_frame_equal(drawn, pd.read_parquet(imdb / f"sample_{split}.parquet"))


def test_writes_are_atomic(tmp_path):
    frame = pd.DataFrame({"text": ["a", "b"], "label": [0, 1]})
    path = testdata.write_atomic(frame, tmp_path / "imdb" / "sample_train.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(path), frame)
    assert [p.name for p in path.parent.iterdir()] == ["sample_train.parquet"]  # no tmp file left behind


def test_a_failed_write_leaves_neither_a_file_nor_a_tmp(tmp_path):
    bad = pd.DataFrame({"text": ["a"], "label": [object()]})  # pyarrow cannot write an arbitrary object
    with pytest.raises(Exception):  # noqa: B017 - whichever pyarrow error; the point is what is left on disk
        testdata.write_atomic(bad, tmp_path / "x.parquet")
    assert list(tmp_path.iterdir()) == []
