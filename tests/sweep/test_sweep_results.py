"""Reading run directories: finished or not, summary paths, curves of a stage, best step."""

import pytest

from rlcot.sweep import results, spec

from tests.sweep.sweep_runs import EVAL, write_run


def test_lookup_splits_on_dots_between_keys_only():
    summary = {"eval_after": {f"{EVAL}/greedy/pass@1": 0.5, "gsm8k:test/sampled/avg@8": 0.25,
                              "qwen2.5:test/greedy/pass@1": 0.75},
               "stages": {"rl": {"wall_time_s": 3.0}, "sft.v2": {"loss": 1.5}},
               "wall_time_s": 9.0, "a.b": 1.0, "a": {"b": 2.0}}
    assert results.lookup(summary, f"eval_after.{EVAL}/greedy/pass@1") == 0.5
    assert results.lookup(summary, "eval_after.gsm8k:test/sampled/avg@8") == 0.25
    # A key holding a dot is found whole (the longest matching key wins).
    assert results.lookup(summary, "eval_after.qwen2.5:test/greedy/pass@1") == 0.75
    assert results.lookup(summary, "stages.sft.v2.loss") == 1.5
    assert results.lookup(summary, "stages.rl.wall_time_s") == 3.0
    assert results.lookup(summary, "a.b") == 1.0  # the whole key beats the nested path
    assert results.lookup(summary, "wall_time_s") == 9.0
    for bad in ("eval_after.toyworld:test/greedy/pass@8", "stages.dpo.loss", "eval_after"
                ".", "nope"):
        with pytest.raises(KeyError):
            results.lookup(summary, bad)


def test_run_status_in_both_layouts(tmp_path):
    assert results.run_status(tmp_path / "absent") == results.MISSING
    write_run(tmp_path / "single", acc=0.5, finished=None)  # today's layout: no 'finished'
    write_run(tmp_path / "single_cut", acc=0.5, finished=False)  # no summary.json yet
    write_run(tmp_path / "study", acc=0.5, stages=True)
    write_run(tmp_path / "study_cut", acc=0.5, stages=True, finished=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / "summary.json").write_text('{"steps": ')
    status = {d: results.run_status(tmp_path / d)
              for d in ("single", "single_cut", "study", "study_cut", "empty", "torn")}
    assert status == {"single": "finished", "single_cut": "unfinished", "study": "finished",
                      "study_cut": "unfinished", "empty": "unfinished", "torn": "unfinished"}


def test_curves_come_from_the_final_stage_or_a_named_one(tmp_path):
    write_run(tmp_path / "study", acc=0.5, stages=True, curve=[(2, 0.3), (1, 0.1)])
    (tmp_path / "study" / "sft").mkdir()
    (tmp_path / "study" / "sft" / "metrics.jsonl").write_text('{"step": 7, "loss": 1.0}\n')
    summary = results.read_summary(tmp_path / "study")
    assert [r["step"] for r in results.read_curves(tmp_path / "study", summary)] == [1, 2]
    assert results.read_curves(tmp_path / "study", summary, "sft") == [{"step": 7, "loss": 1.0}]
    write_run(tmp_path / "single", acc=0.5, curve=[(1, 0.2)])
    assert len(results.read_curves(tmp_path / "single", results.read_summary(
        tmp_path / "single"))) == 1


def test_best_step_selection_reads_eval_metrics_at_that_step(tmp_path):
    write_run(tmp_path / "r", acc=0.4, curve=[(10, 0.2), (20, 0.7), (30, 0.7), (40, 0.4)],
              wall=120.0)
    metrics = (spec.Metric("acc", f"eval_after.{EVAL}/greedy/pass@1"),
               spec.Metric("reward", "final_train.reward/total/mean"),
               spec.Metric("wall", "wall_time_s"),
               spec.Metric("tokens", curve="rollout/tokens_sampled", reduce="sum"),
               spec.Metric("len", curve="rollout/length_mean", reduce="max"))
    final = results.run_values(tmp_path / "r", spec.Table(metrics=metrics))
    assert final == {"acc": 0.4, "reward": 0.4, "wall": 120.0, "tokens": 4000.0, "len": 80.0}
    best = results.run_values(tmp_path / "r", spec.Table(
        metrics=metrics, select=f"max:eval/{EVAL}/greedy/pass@1"))
    # The earliest of the tied best steps (20); run totals stay as they are.
    assert best == {"acc": 0.7, "reward": 0.7, "wall": 120.0, "tokens": 4000.0, "len": 80.0}
    worst = results.run_values(tmp_path / "r", spec.Table(
        metrics=metrics[:1], select=f"min:eval/{EVAL}/greedy/pass@1"))
    assert worst == {"acc": 0.2}
    assert results.curve_key("stages.rl.eval_after.x") is None
