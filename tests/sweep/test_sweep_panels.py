"""A table's own curve panels: the plot command draws them after its default ones."""

import pytest

from rlcot.sweep import plot, spec
from tests.sweep.sweep_runs import write_run


def _sweep(panels):
    table = spec.Table(metrics=(spec.Metric("acc", "eval_after.toyworld:test/greedy/pass@1"),),
                       panels=panels)
    return spec.Sweep(arms=(spec.Arm("a"), spec.Arm("b")), seeds=(0,), table=table)


def test_table_panels_are_plotted_after_the_defaults(tmp_path, monkeypatch):
    for arm in ("a", "b"):
        write_run(tmp_path / arm / "seed_0", acc=0.5, curve=[(1, 0.1), (2, 0.2)], stages=True)
    shown = []
    real = plot._key
    monkeypatch.setattr(plot, "_key", lambda p, runs: shown.append(p) or real(p, runs))
    sweep = _sweep([("mine", "rollout/tokens_sampled"), ("absent", "no/such/key")])
    assert sweep.table.panels == (("mine", "rollout/tokens_sampled"), ("absent", "no/such/key"))
    out = plot.plot_curves(sweep, tmp_path)
    assert out is not None and out.read_bytes()[:4] == b"\x89PNG"
    assert shown == [p for _, p in plot.PANELS] + ["rollout/tokens_sampled", "no/such/key"]
    # Explicit panels replace both.
    shown.clear()
    plot.plot_curves(sweep, tmp_path, panels=(("acc", "eval/*/greedy/pass@1"),))
    assert shown == ["eval/*/greedy/pass@1"]


def test_table_panels_need_pairs():
    with pytest.raises(ValueError):
        _sweep([("only a title",)])
