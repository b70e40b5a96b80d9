"""The sft stage's data and resume bookkeeping without training: malformed rows skipped and
counted (or an error), and the log window a checkpoint carries restores bit for bit."""

import json

import pytest

from rlcot.stages.sft import SFTData, load_pairs
from rlcot.toyworld.corpus import WorldConfig


def _jsonl(tmp_path):
    path = tmp_path / "rows.jsonl"
    lines = [json.dumps({"prompt": "p1", "completion": "c1"}).encode(),
             b'{"prompt": "p2", "completion": "c2"',               # 2 truncated JSON
             json.dumps({"prompt": "p3"}).encode(),                 # 3 no completion
             b'{"prompt": "p4", "completion": "\xff"}',             # 4 not UTF-8
             b"",                                                   # (blank: ignored)
             json.dumps({"prompt": "p6", "completion": " "}).encode(),  # 6 empty completion
             json.dumps(["p7", "c7"]).encode(),                     # 7 not an object
             json.dumps({"prompt": "", "completion": "c8"}).encode(),   # 8 empty prompt
             json.dumps({"prompt": "p9", "completion": "c9"}).encode()]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_malformed_sft_rows_are_skipped_and_counted(tmp_path):
    path = _jsonl(tmp_path)
    pairs, skipped = load_pairs(SFTData(dataset=f"jsonl:{path}"), WorldConfig(), None)
    assert pairs == [("p1", "c1"), ("p9", "c9")]
    assert skipped == {"empty_completion": 1, "empty_prompt": 1, "missing_completion": 1,
                       "not_an_object": 1, "not_json": 1, "not_utf8": 1}


def test_malformed_sft_rows_fail_fast_when_configured(tmp_path):
    path = _jsonl(tmp_path)
    with pytest.raises(ValueError, match=f"{path}:2: not_json, and data.on_bad_rows is 'error'"):
        load_pairs(SFTData(dataset=f"jsonl:{path}", on_bad_rows="error"), WorldConfig(), None)
    with pytest.raises(ValueError, match="on_bad_rows must be 'skip' or 'error'"):
        SFTData(on_bad_rows="drop")



def test_dataset_rows_become_prompt_and_solution_pairs():
    from rlcot.data.templates import TemplateConfig
    data = SFTData(dataset="toyworld", limit=5, template=TemplateConfig("r1_zero", instruction=""))
    pairs, skipped = load_pairs(data, WorldConfig(), None)
    assert len(pairs) == 5 and skipped == {}
    from rlcot.toyworld.dataset import ToyWorldSource
    first = ToyWorldSource(WorldConfig(), "train", 1)[0]
    assert first["question"] in pairs[0][0] and pairs[0][1] == first["solution"]
