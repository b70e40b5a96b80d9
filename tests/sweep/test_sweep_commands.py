"""The sweep, table and plot commands through rlcot.main, and the plots they write."""

import subprocess
import sys
from pathlib import Path

from rlcot.sweep import spec
from rlcot.sweep.plot import plot_bars, plot_curves, seed_band
from rlcot.sweep.table import collect
from tests.sweep.sweep_runs import EVAL, write_run

REPO = Path(__file__).resolve().parents[2]

EXPERIMENT = '''
from rlcot import run_config
from rlcot.sweep import spec


def get_config(arg=None):
    c = run_config.default_config()
    c.model.source = "preset:tiny"
    c.rewards = {"math_accuracy": 1.0}
    return c


def get_sweep(arg=None):
    return spec.Sweep(arms=spec.grid({"learner.optimizer.lr": (0.1, 0.2)}), seeds=(0, 1),
                      table=spec.Table(metrics=(spec.Metric(
                          "acc", "eval_after.toyworld:test/greedy/pass@1", scale=100),)))
'''


def _main(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "rlcot.main", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _synthetic_sweep(tmp_path):
    exp = tmp_path / "exp.py"
    exp.write_text(EXPERIMENT)
    root = tmp_path / "root"
    for i, lr in enumerate(("0.1", "0.2")):
        for seed in (0, 1):
            if (lr, seed) != ("0.2", 1):
                write_run(root / f"lr={lr}" / f"seed_{seed}", acc=0.3 + 0.2 * i + 0.1 * seed,
                          curve=[(s, 0.1 * s + 0.05 * seed + i) for s in (1, 2, 3)])
    return exp, root


def test_table_and_plot_commands_write_their_files(tmp_path):
    exp, root = _synthetic_sweep(tmp_path)
    out = _main("table", f"--config={exp}", f"--root={root}")
    assert out.returncode == 0, out.stderr
    md = (root / "table.md").read_text()
    assert "| lr=0.1 | 35.0 ± 5.0 | 2/2 |  |" in md
    assert "| lr=0.2 | 50.0 (n=1/2) ⚠ | 1/2 | seed 1 missing |" in md
    assert md in out.stdout
    out = _main("plot", f"--config={exp}", f"--root={root}")
    assert out.returncode == 0, out.stderr
    for name in ("curves.png", "bars.png"):
        assert (root / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_dry_run_and_bad_usage(tmp_path):
    out = _main("sweep", "--config=experiments/ablate_algorithms.py:tiny",
                f"--root={tmp_path}", "--dry_run")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 9 and lines[0] == (
        "python -m rlcot.main run --config=experiments/ablate_algorithms.py:arm=grpo,tiny "
        f"--workdir={tmp_path}/grpo/seed_0 --config.seed=0")
    assert not list(tmp_path.iterdir())  # a dry run creates nothing
    out = _main("table", "--config=experiments/ablate_algorithms.py:tiny")
    assert out.returncode != 0 and "--config and --root are required" in out.stderr


def test_seed_bands_and_panels_without_data(tmp_path):
    runs = [[{"step": 1, "x": 1.0}, {"step": 2, "x": 3.0}], [{"step": 1, "x": 2.0}]]
    band = seed_band(runs, "x")
    assert band[0][:2] == (1, 1.5) and band[0][3] == 2
    assert band[1][0] == 2 and band[1][1] == 3.0 and band[1][3] == 1  # one seed at step 2
    exp, root = _synthetic_sweep(tmp_path)
    sweep = spec.load_sweep(str(exp))
    assert plot_curves(sweep, root, panels=(("none", "no/such/key"),)) is None
    assert plot_curves(sweep, root, panels=(("acc", "eval/*/greedy/pass@1"),)) is not None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert plot_bars(sweep, collect(sweep, empty), empty) is None
    assert EVAL in (root / "lr=0.1" / "seed_0" / "summary.json").read_text()
