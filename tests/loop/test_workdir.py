"""metrics.jsonl reads as if a resumed run had never been interrupted; JSON writes are atomic."""

import json
import math

from rlcot.workdir import MetricsWriter, read_metrics, write_json


def test_resume_drops_rows_after_the_checkpoint(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=False)
    for s in range(1, 6):
        w.write(s, {"loss": float(s), "nan": math.nan})
    w.close()
    # Killed after step 5; the last checkpoint was at step 3: steps 4-5 are redone.
    w = MetricsWriter(tmp_path, resume_step=3, tensorboard=False)
    w.write(4, {"loss": 40.0})
    w.close()
    rows = read_metrics(tmp_path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["loss"] == 40.0 and rows[0]["nan"] == "nan"


def test_fresh_start_clears_old_rows(tmp_path):
    w = MetricsWriter(tmp_path, tensorboard=False)
    w.write(1, {"a": 1})
    w.close()
    MetricsWriter(tmp_path, resume_step=None, tensorboard=False).close()
    assert read_metrics(tmp_path) == []


def test_tensorboard_events_written(tmp_path):
    w = MetricsWriter(tmp_path)
    w.write(1, {"reward": 0.5, "name": "x"})
    w.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_write_json_atomic(tmp_path):
    write_json(tmp_path / "summary.json", {"acc": 0.5, "inf": math.inf})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"acc": 0.5, "inf": "inf"}
    assert not list(tmp_path.glob("*.tmp"))
