"""Sweep declarations: grid expansion, point names, validation, experiment arguments."""

import pytest

from rlcot.sweep import spec

TABLE = spec.Table(metrics=(spec.Metric("acc", "eval_after.toy:test/greedy/pass@1"),))


def test_grid_crosses_axes_in_order_with_short_unique_names():
    arms = spec.grid({"learner.objective.kl.coef": (0.0, 0.01), "rollout.num_samples": (4, 8)})
    assert [a.name for a in arms] == [
        "coef=0.0,num_samples=4", "coef=0.0,num_samples=8",
        "coef=0.01,num_samples=4", "coef=0.01,num_samples=8"]
    assert arms[1].overrides == {"learner.objective.kl.coef": 0.0, "rollout.num_samples": 8}
    # Same last part in two keys: names keep as many dotted parts as it takes to differ.
    arms = spec.grid({"learner.optimizer.lr": (1.0,), "learner.value.optimizer.lr": (2.0,)})
    assert arms[0].name == "learner.optimizer.lr=1.0,value.optimizer.lr=2.0"


def test_points_are_arm_major_with_seed_dirs_and_seed_override():
    sweep = spec.Sweep(arms=spec.grid({"train.steps": (1, 2)}), seeds=(0, 5), table=TABLE)
    pts = sweep.points()
    assert [p.name for p in pts] == ["steps=1/seed_0", "steps=1/seed_5", "steps=2/seed_0",
                                     "steps=2/seed_5"]
    assert pts[3].overrides == {"train.steps": 2, "seed": 5}
    # Stable: the same declaration names the same directories.
    again = spec.Sweep(arms=spec.grid({"train.steps": (1, 2)}), seeds=(0, 5), table=TABLE)
    assert [p.name for p in again.points()] == [p.name for p in pts]


def test_directory_names_are_filesystem_safe_and_collisions_fail():
    assert spec.slug("PPO (GAE)/v2") == "PPO__GAE__v2"
    assert spec.slug("stop_strings=('</answer>',)") == "stop_strings=____answer__,_"
    assert spec.slug("-x") == "_-x" and spec.slug("..") == "_.."
    with pytest.raises(ValueError, match="share the directory name 'a_b'"):
        spec.Sweep(arms=(spec.Arm("a/b"), spec.Arm("a b")), table=TABLE)


def test_sweep_validation_errors_name_the_problem():
    with pytest.raises(ValueError, match="sets the seed key 'seed'"):
        spec.Sweep(arms=(spec.Arm("a", {"seed": 1}),), table=TABLE)
    with pytest.raises(ValueError, match="baseline 'nope' is not an arm"):
        spec.Sweep(arms=(spec.Arm("a"),),
                   table=spec.Table(metrics=TABLE.metrics, baseline="nope"))
    with pytest.raises(ValueError, match="seeds repeat"):
        spec.Sweep(arms=(spec.Arm("a"),), seeds=(1, 1), table=TABLE)
    with pytest.raises(ValueError, match="bad config key"):
        spec.Arm("a", {"learner..lr": 1.0})
    with pytest.raises(TypeError, match="sweep values"):
        spec.Arm("a", {"x": {"nested": 1}})
    with pytest.raises(ValueError, match="exactly one of path and curve"):
        spec.Metric("m")
    with pytest.raises(ValueError, match="select must be"):
        spec.Table(metrics=TABLE.metrics, select="best")
    with pytest.raises(ValueError, match="main metric 'x'"):
        spec.Table(metrics=TABLE.metrics, main="x")


def test_values_format_the_way_the_config_flag_parses_them():
    assert [spec.format_value(v) for v in (True, 3, 0.1, 1e-5, "gspo", ("a", "b"))] == [
        "True", "3", "0.1", "1e-05", "gspo", "('a', 'b')"]


def test_parse_arg():
    d = dict(arm="grpo", tiny=False, n=3)
    assert spec.parse_arg(None, **d) == d
    assert spec.parse_arg("arm=dapo,tiny,n=5", **d) == dict(arm="dapo", tiny=True, n=5)
    assert spec.parse_arg("tiny=false", **d)["tiny"] is False
    with pytest.raises(ValueError, match="unknown argument 'size'"):
        spec.parse_arg("size=big", **d)
    with pytest.raises(ValueError, match="needs a value"):
        spec.parse_arg("arm", **d)
    assert spec.split_config("experiments/x.py:arm=a,tiny") == ("experiments/x.py", "arm=a,tiny")
    assert spec.split_config("experiments/x.py") == ("experiments/x.py", None)
