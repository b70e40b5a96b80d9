"""Rows that are stages of one study (views): a sweep whose single running arm holds every
method as a stage, its table reading each stage's own summary and curves, and the scatter
plot of two metrics (one point per arm and seed)."""

import json

import pytest

from rlcot.sweep import spec
from rlcot.sweep.plot import plot_curves, plot_scatter
from rlcot.sweep.table import collect, markdown

EVAL = "toyworld:test"
ACC = spec.Metric("acc (%)", f"eval_after.{EVAL}/greedy/pass@1", scale=100)
LEN = spec.Metric("tokens", f"eval_after.{EVAL}/greedy/len")


def _study(run_dir, per_stage, finished=True):
    """A finished study whose stages 'long' and 'short' end with the given (acc, len)."""
    stages = {}
    for name, (acc, length) in per_stage.items():
        d = run_dir / name
        d.mkdir(parents=True)
        rows = [{"step": s, f"eval/{EVAL}/greedy/len": length + 10 - 5 * s} for s in (0, 1, 2)]
        (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        stages[name] = {"eval_after": {f"{EVAL}/greedy/pass@1": acc,
                                       f"{EVAL}/greedy/len": length}}
    last = list(per_stage)[-1]
    summary = {**stages[last], "stage_order": list(per_stage), "stages": stages,
               "finished": finished}
    (run_dir / "summary.json").write_text(json.dumps(summary))


def _sweep(**table):
    arms = (spec.Arm("study"),
            spec.Arm("long model", run="study", stage="long"),
            spec.Arm("short model", run="study", stage="short"))
    return spec.Sweep(arms=arms, seeds=(0, 1),
                      table=spec.Table(metrics=(ACC, LEN), baseline="long model", **table))


def _runs(root):
    _study(root / "study" / "seed_0", {"long": (0.9, 150.0), "short": (0.8, 100.0)})
    _study(root / "study" / "seed_1", {"long": (0.7, 130.0), "short": (0.6, 90.0)})


def test_views_run_nothing_and_read_their_stage(tmp_path):
    sweep = _sweep()
    assert [p.name for p in sweep.points()] == ["study/seed_0", "study/seed_1"]
    assert sweep.run_dir(tmp_path, sweep.arms[2], 1) == tmp_path / "study" / "seed_1"
    _runs(tmp_path)
    rows = {r.arm.name: r for r in collect(sweep, tmp_path)}
    assert rows["long model"].cells[ACC.name].values == (0.9, 0.7)
    assert rows["short model"].cells[LEN.name].values == (100.0, 90.0)
    # The running arm reads the final stage (the summary's top level).
    assert rows["study"].cells[ACC.name].values == (0.8, 0.6)
    # Welch's t-test of a view row against a view baseline.
    assert 0.0 < rows["short model"].cells[LEN.name].p_value < 1.0
    md = markdown(sweep, collect(sweep, tmp_path))
    assert "| long model | 80.0 ± 10.0 | 140.0 ± 10.0 | 2/2 |  |" in md


def test_a_view_of_an_unfinished_study_is_not_averaged(tmp_path):
    _study(tmp_path / "study" / "seed_0", {"long": (0.9, 150.0), "short": (0.8, 100.0)})
    _study(tmp_path / "study" / "seed_1", {"long": (0.7, 130.0)}, finished=False)
    rows = {r.arm.name: r for r in collect(_sweep(), tmp_path)}
    assert rows["long model"].cells[ACC.name].values == (0.9,)
    assert rows["long model"].status == {0: "finished", 1: "unfinished"}


def test_scatter_and_curves_read_each_views_stage(tmp_path):
    _runs(tmp_path)
    sweep = _sweep(scatter=("tokens", "acc (%)"))
    rows = collect(sweep, tmp_path)
    assert rows[1].per_seed == {0: {ACC.name: 0.9, LEN.name: 150.0},
                                1: {ACC.name: 0.7, LEN.name: 130.0}}
    out = plot_scatter(sweep, rows, tmp_path)
    assert out is not None and out.stat().st_size > 1000
    assert plot_scatter(_sweep(), rows, tmp_path / "none") is None  # no scatter declared
    curves = plot_curves(sweep, tmp_path, panels=(("length", f"eval/*/greedy/len"),))
    assert curves is not None and curves.is_file()


def test_a_view_of_a_stage_the_study_lacks_fails_naming_it(tmp_path):
    _runs(tmp_path)
    arms = (spec.Arm("study"), spec.Arm("typo", run="study", stage="lnog"))
    sweep = spec.Sweep(arms=arms, seeds=(0, 1), table=spec.Table(metrics=(ACC,)))
    with pytest.raises(ValueError, match=r"no stage 'lnog'.*\['long', 'short'\]"):
        collect(sweep, tmp_path)


def test_bad_views_fail_when_declared():
    table = spec.Table(metrics=(ACC,))
    with pytest.raises(ValueError, match="not an arm that runs"):
        spec.Sweep(arms=(spec.Arm("a"), spec.Arm("b", run="c")), table=table)
    with pytest.raises(ValueError, match="not an arm that runs"):
        spec.Sweep(arms=(spec.Arm("a"), spec.Arm("b", run="a"), spec.Arm("c", run="b")),
                   table=table)
    with pytest.raises(ValueError, match="cannot have overrides"):
        spec.Arm("b", {"seed": 1}, run="a")
    with pytest.raises(ValueError, match="arm names repeat"):
        spec.Sweep(arms=(spec.Arm("a"), spec.Arm("a", run="a")), table=table)
    with pytest.raises(ValueError, match="not an arm of the table"):
        spec.Sweep(arms=(spec.Arm("a", in_table=False), spec.Arm("b", run="a")),
                   table=spec.Table(metrics=(ACC,), baseline="a"))
    with pytest.raises(ValueError, match="no arm is in the table"):
        spec.Sweep(arms=(spec.Arm("a", in_table=False),), table=table)
    with pytest.raises(ValueError, match="scatter must name two of the metrics"):
        spec.Table(metrics=(ACC, LEN), scatter=("tokens", "nope"))


def test_an_arm_out_of_the_table_runs_without_a_row(tmp_path):
    _runs(tmp_path)
    arms = (spec.Arm("study", in_table=False), spec.Arm("long", run="study", stage="long"))
    sweep = spec.Sweep(arms=arms, seeds=(0, 1), table=spec.Table(metrics=(ACC,)))
    assert [p.name for p in sweep.points()] == ["study/seed_0", "study/seed_1"]
    assert [r.arm.name for r in collect(sweep, tmp_path)] == ["long"]


def test_a_ratio_metric_divides_two_summary_values(tmp_path):
    per_correct = spec.Metric("tokens per correct", LEN.path,
                              divide_by=f"eval_after.{EVAL}/greedy/pass@1")
    _runs(tmp_path)
    _study(tmp_path / "study" / "seed_2", {"long": (0.0, 150.0), "short": (0.5, 100.0)})
    sweep = spec.Sweep(arms=(spec.Arm("study"), spec.Arm("long", run="study", stage="long")),
                       seeds=(0, 1, 2), table=spec.Table(metrics=(per_correct,)))
    rows = {r.arm.name: r for r in collect(sweep, tmp_path)}
    assert rows["study"].cells["tokens per correct"].values == pytest.approx(
        (100 / 0.8, 90 / 0.6, 100 / 0.5))
    # No correct answer: no value (not infinity, not zero); the cell says n=2/3.
    assert rows["long"].cells["tokens per correct"].values == pytest.approx((150 / 0.9, 130 / 0.7))
    with pytest.raises(ValueError, match="divide_by needs a path"):
        spec.Metric("x", curve="k", divide_by="y")
