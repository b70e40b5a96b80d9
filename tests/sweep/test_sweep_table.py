"""Tables over synthetic sweeps: means and standard errors over the seeds that finished,
cells over fewer seeds flagged with their n, missing and unfinished runs named, significance
against a baseline, byte-identical files from the same runs."""

import csv
import io
import math

import pytest

from rlcot.sweep import spec
from rlcot.sweep.table import collect, markdown, to_csv, write_table

from tests.sweep.sweep_runs import EVAL, write_run

ACC = spec.Metric("greedy pass@1 (%)", f"eval_after.{EVAL}/greedy/pass@1", scale=100)
LEN = spec.Metric("tokens", f"eval_after.{EVAL}/greedy/len")


def _sweep(baseline=None):
    return spec.Sweep(arms=(spec.Arm("grpo"), spec.Arm("dapo"), spec.Arm("rloo")),
                      seeds=(0, 1, 2), table=spec.Table(metrics=(ACC, LEN), baseline=baseline))


def _runs(root):
    for seed, acc in enumerate((0.5, 0.6, 0.7)):
        write_run(root / "grpo" / f"seed_{seed}", acc=acc, length=50.0 + seed)
    # dapo: seed 0 finished, seed 1 missing, seed 2 unfinished (its partial numbers on disk)
    write_run(root / "dapo" / "seed_0", acc=0.9, stages=True)
    write_run(root / "dapo" / "seed_2", acc=0.1, stages=True, finished=False)
    # rloo: all finished, but seed 1 lacks the accuracy metric
    write_run(root / "rloo" / "seed_0", acc=0.2)
    write_run(root / "rloo" / "seed_1", acc=None)
    write_run(root / "rloo" / "seed_2", acc=0.4)


def test_cells_average_only_finished_seeds_and_say_how_many(tmp_path):
    _runs(tmp_path)
    rows = {r.arm.name: r for r in collect(_sweep(), tmp_path)}
    g = rows["grpo"].cells[ACC.name]
    assert (g.n, g.declared) == (3, 3)
    assert g.mean == pytest.approx(0.6) and g.sem == pytest.approx(0.1 / math.sqrt(3))
    d = rows["dapo"].cells[ACC.name]
    # Only seed 0: averaging the unfinished seed 2 in would give 0.5, not 0.9.
    assert d.values == (0.9,) and d.n == 1
    assert rows["dapo"].status == {0: "finished", 1: "missing", 2: "unfinished"}
    r = rows["rloo"].cells[ACC.name]
    # Seed 1 has no value: mean over 2 seeds is 0.3; counting it as 0 would give 0.2.
    assert r.values == (0.2, 0.4) and r.mean == pytest.approx(0.3)
    assert rows["rloo"].cells[LEN.name].n == 3 and rows["rloo"].finished == 3


def test_markdown_flags_short_cells_and_names_missing_runs(tmp_path):
    _runs(tmp_path)
    sweep = _sweep()
    md = markdown(sweep, collect(sweep, tmp_path))
    lines = md.splitlines()
    assert lines[0] == "| arm | greedy pass@1 (%) | tokens | seeds | not finished |"
    assert lines[2] == "| grpo | 60.0 ± 5.8 | 51.0 ± 0.6 | 3/3 |  |"
    assert lines[3] == ("| dapo | 90.0 (n=1/3) ⚠ | 50.0 (n=1/3) ⚠ | 1/3 | seed 1 missing; "
                        "seed 2 unfinished |")
    assert lines[4] == "| rloo | 30.0 ± 10.0 (n=2/3) ⚠ | 50.0 ± 0.0 | 3/3 |  |"


def test_empty_cells_and_row_keys(tmp_path):
    sweep = spec.Sweep(arms=spec.grid({"learner.objective.kl.coef": (0.0, 0.1)}), seeds=(0, 1),
                       table=spec.Table(metrics=(ACC,),
                                        row_keys=("learner.objective.kl.coef",)))
    write_run(tmp_path / "coef=0.0" / "seed_0", acc=0.5)
    lines = markdown(sweep, collect(sweep, tmp_path)).splitlines()
    assert lines[0] == ("| arm | learner.objective.kl.coef | greedy pass@1 (%) | seeds | "
                        "not finished |")
    assert lines[2] == "| coef=0.0 | 0.0 | 50.0 (n=1/2) ⚠ | 1/2 | seed 1 missing |"
    assert lines[3] == "| coef=0.1 | 0.1 | — (n=0/2) | 0/2 | seed 0 missing; seed 1 missing |"


def test_significance_against_the_baseline_row(tmp_path):
    _runs(tmp_path)
    sweep = _sweep(baseline="grpo")
    rows = {r.arm.name: r for r in collect(sweep, tmp_path)}
    # rloo (0.2, 0.4) vs grpo (0.5, 0.6, 0.7): Welch t = -2.598, df = 1.684, p = 0.1444
    # (scipy.stats.ttest_ind, equal_var=False).
    assert rows["rloo"].cells[ACC.name].p_value == pytest.approx(0.1443662048167655, rel=1e-9)
    assert math.isnan(rows["dapo"].cells[ACC.name].p_value)  # one seed: no test
    assert math.isnan(rows["grpo"].cells[ACC.name].p_value)
    md = markdown(sweep, collect(sweep, tmp_path))
    assert "Welch's t-test against grpo (two-sided p):" in md
    assert "| dapo | — | — |" in md and "| rloo | 0.144 |" in md


def test_files_are_byte_identical_across_runs_and_csv_keeps_raw_values(tmp_path):
    _runs(tmp_path)
    sweep = _sweep(baseline="grpo")
    md, csv_path, _ = write_table(sweep, tmp_path)
    first = (md.read_bytes(), csv_path.read_bytes())
    md.unlink()
    write_table(sweep, tmp_path)
    assert (md.read_bytes(), csv_path.read_bytes()) == first
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert len(rows) == 6 and rows[0]["arm"] == "grpo" and rows[0]["values"] == "0.5;0.6;0.7"
    dapo = next(r for r in rows if r["arm"] == "dapo" and r["metric"] == ACC.name)
    assert (dapo["n"], dapo["declared"], dapo["mean"]) == ("1", "3", "0.9")
    assert dapo["not_finished"] == "seed 1 missing; seed 2 unfinished"
    assert to_csv(sweep, collect(sweep, tmp_path)) == csv_path.read_text()
