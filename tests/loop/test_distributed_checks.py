"""Bad input for a (multi-process) RL run fails before anything compiles, naming the settings:
a mesh that does not fit the devices, a batch that does not split over the batch shards or the
processes, a process count other than the launch's, features not supported across processes,
and a mesh whose processes would not hold contiguous blocks of the batch."""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import pytest

from rlcot import distributed
from rlcot.sharding import MeshConfig

sys.path.insert(0, str(Path(__file__).parent))
from multiprocess_worker import tiny_rl_config  # noqa: E402

sys.path.pop(0)


def _rc(**changes):
    from rlcot import run_config
    c = tiny_rl_config(1)
    for section, values in changes.items():
        c[section].update(values)
    return run_config.resolve(c)


@pytest.mark.parametrize("mesh, match", [
    (dict(data=3, fsdp=-1), r"8 devices do not divide into \(mesh.data, mesh.fsdp, mesh.tensor\)"
                            r"=\(3, -1, 1\): 8 is not a multiple of 3"),
    (dict(data=2, fsdp=2, tensor=1), r"mesh \(mesh.data, mesh.fsdp, mesh.tensor\)=\(2, 2, 1\) "
                                     r"needs 4 devices, have 8"),
])
def test_mesh_that_does_not_fit_the_devices(mesh, match):
    with pytest.raises(ValueError, match=match):
        MeshConfig(**mesh).make()


def test_batch_that_does_not_split_over_the_batch_shards():
    from rlcot.loop import _check_rows
    rc = _rc(data=dict(batch_prompts=3), rollout=dict(num_samples=2),
             learner=dict(micro_batches=1))
    with pytest.raises(ValueError, match=r"data.batch_prompts x rollout.num_samples = 3 x 2 rows"
                                         r".*mesh.data x mesh.fsdp = 8"):
        _check_rows(rc, row_shards=8)
    _check_rows(_rc(learner=dict(micro_batches=2)), row_shards=8)  # 16 rows: 2 x 8


class _Device:
    def __init__(self, process: int):
        self.process_index = process


class _Sharding:
    """Rows of each device (a stand-in for a NamedSharding over processes' devices)."""
    def __init__(self, blocks):
        self.blocks = blocks  # [(process, start, stop)]

    def devices_indices_map(self, shape):
        return {_Device(p): (slice(a, b),) for p, a, b in self.blocks}


@pytest.fixture
def two_processes(monkeypatch):
    monkeypatch.setattr(jax, "process_count", lambda: 2)


def test_row_blocks_must_be_contiguous_per_process(two_processes):
    distributed.check_row_blocks(_Sharding([(0, 0, 4), (0, 4, 8), (1, 8, 12), (1, 12, 16)]), 16)
    # Processes interleaved along the batch axes: process 0 would hold rows 0-3 and 8-11.
    with pytest.raises(ValueError, match=r"process 0 of 2 must hold rows \[0, 8\).*contiguous"):
        distributed.check_row_blocks(
            _Sharding([(0, 0, 4), (1, 4, 8), (0, 8, 12), (1, 12, 16)]), 16)


@pytest.mark.parametrize("kw, match", [
    (dict(batch_prompts=3), r"data.batch_prompts = 3 does not split over 2 processes"),
    (dict(dynamic_sampling=True), r"rollout.dynamic_sampling is not supported with 2 processes"),
    (dict(model_rewards=("rm",)), r"rewards \['rm'\] score with a model"),
])
def test_features_refused_across_processes(two_processes, kw, match):
    mesh = MeshConfig().make()
    args = {**dict(batch_prompts=4, num_samples=4, dynamic_sampling=False, model_rewards=()),
            **kw}
    rows = _Sharding([(0, 0, 8), (1, 8, 16)])
    with pytest.raises(ValueError, match=match):
        distributed.check_run(mesh, rows, **args)
    distributed.check_run(mesh, rows, batch_prompts=4, num_samples=4, dynamic_sampling=False,
                          model_rewards=())


def test_process_count_must_match_the_launch():
    distributed.check_process_count(None)
    distributed.check_process_count(1)
    with pytest.raises(ValueError, match=r"the launch says 2 processes .* jax sees 1"):
        distributed.check_process_count(2)


def test_launch_settings(monkeypatch):
    for k in (distributed.ENV_ADDRESS, distributed.ENV_PROCESSES, distributed.ENV_PROCESS_ID):
        monkeypatch.delenv(k, raising=False)
    assert not distributed.Launch.from_env().explicit
    monkeypatch.setenv(distributed.ENV_ADDRESS, "10.0.0.1:1234")
    monkeypatch.setenv(distributed.ENV_PROCESSES, "4")
    monkeypatch.setenv(distributed.ENV_PROCESS_ID, "3")
    assert distributed.Launch.from_env() == distributed.Launch("10.0.0.1:1234", 4, 3)
    assert distributed.Launch.from_env(process_id=1).process_id == 1  # flags first
    with pytest.raises(ValueError, match=r"process_id must be in \[0, 4\), got 4"):
        distributed.Launch.from_env(process_id=4)
    monkeypatch.setenv(distributed.ENV_PROCESSES, "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES must be an integer"):
        distributed.Launch.from_env()
    with pytest.raises(ValueError, match="needs all of coordinator address, number of processes"):
        distributed.Launch(num_processes=2, process_id=0)  # no address
    # An address alone: the cluster's detection gives the count and the index.
    assert not distributed.Launch(coordinator_address="10.0.0.1:1234").explicit
    # One process: nothing to join, even when named explicitly.
    distributed.initialize(distributed.Launch("h:1", 1, 0))
    assert jax.process_count() == 1


def test_stage_kinds_that_are_not_multi_process_correct_are_refused(two_processes, tmp_path,
                                                                     monkeypatch):
    """A multi-process study with a stage of another kind than rl, sft and dpo to run (here
    eval) fails before any stage runs or anything is written, naming the stage, its kind and
    what works."""
    from rlcot import stages, study
    from tests.loop.test_loop import tiny_config
    ran = []
    for kind in stages.KINDS:
        monkeypatch.setattr(stages.kind_module(kind), "run",
                            lambda cfg, ctx, kind=kind: ran.append(kind) or {})
    c = tiny_config(1)
    c.stage_order = ("base", "rl", "final")
    c.stages.final = stages.defaults("eval")
    with pytest.raises(ValueError, match=r"stage\(s\) 'final' \(eval\): stage kind\(s\) "
                                         r"\['eval'\] do not run across 2 processes yet; only "
                                         r"\['rl', 'sft', 'dpo'\] stages do"):
        study.run(c, tmp_path / "w")
    assert ran == [] and not (tmp_path / "w").exists()
    distributed.check_stage_kinds({"base": "sft", "rl": "rl"})
    with pytest.raises(ValueError, match=r"'rm' \(reward_model\)"):
        distributed.check_stage_kinds({"rl": "rl", "rm": "reward_model"})
