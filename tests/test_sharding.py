"""Tests for src.sharding: shard resolution from flags and launcher variables."""

import itertools
import logging
from pathlib import Path

import pytest
import torch

from src import sharding

resolve = sharding.resolve_shard


# --------------------------------------------------------------------------- resolve_shard


def test_nothing_set_is_single_shard():
    assert resolve(environ={}) == (0, 1)
    assert resolve(num_shards=1, environ={}) == (0, 1)


def test_explicit_shard():
    assert resolve("2/5", environ={}) == (2, 5)
    assert resolve(" 0 / 1 ", environ={}) == (0, 1)
    assert resolve("1/3", num_shards=3, environ={}) == (1, 3)


@pytest.mark.parametrize("bad", ["5/5", "6/5", "-1/5", "0/0", "a/b", "3", "1/2/3", ""])
def test_explicit_shard_invalid(bad):
    if bad == "":
        assert resolve(bad, environ={}) == (0, 1)  # empty flag means "not given"
        return
    with pytest.raises(ValueError, match=r"--shard"):
        resolve(bad, environ={})


def test_explicit_shard_conflicting_num_shards():
    with pytest.raises(ValueError, match="--num_shards is 4"):
        resolve("1/3", num_shards=4, environ={})


def test_torchrun():
    assert resolve(environ={"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "3"}) == (3, 8)
    assert resolve(num_shards=8, environ={"RANK": "3", "WORLD_SIZE": "8"}) == (3, 8)
    with pytest.raises(ValueError, match="--num_shards is 4"):
        resolve(num_shards=4, environ={"RANK": "3", "WORLD_SIZE": "8"})


def test_slurm_tasks():
    assert resolve(environ={"SLURM_PROCID": "5", "SLURM_NTASKS": "6"}) == (5, 6)


def test_slurm_array():
    env = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}
    assert resolve(environ=env) == (2, 4)
    # --array=1-4: IDs start at SLURM_ARRAY_TASK_MIN
    env = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}
    assert resolve(environ=env) == (3, 4)
    # --array=0-6:2 -> IDs 0,2,4,6, four tasks
    env = {
        "SLURM_ARRAY_TASK_ID": "4",
        "SLURM_ARRAY_TASK_COUNT": "4",
        "SLURM_ARRAY_TASK_MIN": "0",
        "SLURM_ARRAY_TASK_STEP": "2",
    }
    assert resolve(environ=env) == (2, 4)
    # without a count variable, --num_shards supplies it
    assert resolve(num_shards=10, environ={"SLURM_ARRAY_TASK_ID": "7"}) == (7, 10)
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_COUNT"):
        resolve(environ={"SLURM_ARRAY_TASK_ID": "7"})
    with pytest.raises(ValueError, match="not in 0..3"):
        resolve(environ={"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"})


def test_slurm_array_job_with_single_task_uses_array_variables():
    # Every sbatch job sets SLURM_PROCID=0/SLURM_NTASKS=1; that must not hide the array.
    env = {
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "1",
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_ARRAY_TASK_COUNT": "5",
    }
    assert resolve(environ=env) == (3, 5)
    assert resolve(environ={"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) == (0, 1)
    env = {"RANK": "0", "WORLD_SIZE": "1", "PBS_ARRAY_INDEX": "1"}
    assert resolve(environ=env, num_shards=2) == (1, 2)


def test_pbs_array():
    assert resolve(num_shards=4, environ={"PBS_ARRAY_INDEX": "3"}) == (3, 4)
    with pytest.raises(ValueError, match="PBS_ARRAY_INDEX is set but --num_shards is not"):
        resolve(environ={"PBS_ARRAY_INDEX": "3"})
    with pytest.raises(ValueError, match="PBS_ARRAY_INDEX"):
        resolve(num_shards=4, environ={"PBS_ARRAY_INDEX": "4"})


def test_precedence_order():
    env = {
        "RANK": "1",
        "WORLD_SIZE": "2",
        "SLURM_PROCID": "2",
        "SLURM_NTASKS": "3",
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_ARRAY_TASK_COUNT": "4",
        "PBS_ARRAY_INDEX": "4",
    }
    assert resolve("0/7", environ=env) == (0, 7)
    assert resolve(environ=env) == (1, 2)
    del env["RANK"], env["WORLD_SIZE"]
    assert resolve(environ=env) == (2, 3)
    del env["SLURM_PROCID"], env["SLURM_NTASKS"]
    assert resolve(environ=env) == (3, 4)
    del env["SLURM_ARRAY_TASK_ID"], env["SLURM_ARRAY_TASK_COUNT"]
    assert resolve(num_shards=5, environ=env) == (4, 5)


def test_num_shards_without_index_is_an_error():
    with pytest.raises(ValueError, match="--num_shards given but no shard index"):
        resolve(num_shards=4, environ={})
    with pytest.raises(ValueError, match="must be >= 1"):
        resolve(num_shards=0, environ={})


@pytest.mark.parametrize(
    "env, name",
    [
        ({"RANK": "x", "WORLD_SIZE": "2"}, "RANK"),
        ({"RANK": "0", "WORLD_SIZE": "2.0"}, "WORLD_SIZE"),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "many"}, "SLURM_NTASKS"),
        ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "?"},
         "SLURM_ARRAY_TASK_MIN"),
        ({"PBS_ARRAY_INDEX": "1[2]"}, "PBS_ARRAY_INDEX"),
    ],
)
def test_non_integer_variables(env, name):
    with pytest.raises(ValueError, match=name):
        resolve(num_shards=4 if name == "PBS_ARRAY_INDEX" else None, environ=env)


def test_rank_out_of_range():
    with pytest.raises(ValueError, match="RANK/WORLD_SIZE"):
        resolve(environ={"RANK": "2", "WORLD_SIZE": "2"})


def test_lone_rank_is_ignored_with_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="src.sharding"):
        assert resolve(environ={"RANK": "1"}) == (0, 1)
    assert "RANK is set without WORLD_SIZE" in caplog.text


def test_batch_script_procid_alone_is_quiet(caplog):
    """A Slurm batch script (an array task included) has SLURM_PROCID=0 and, without --ntasks, no
    SLURM_NTASKS: that is normal, not worth a warning in every task's log."""
    env = {"SLURM_PROCID": "0", "SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "4"}
    with caplog.at_level(logging.DEBUG, logger="src.sharding"):
        assert resolve(environ=env) == (2, 4)
        assert resolve(environ={"SLURM_PROCID": "0"}) == (0, 1)
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="src.sharding"):  # a rank > 0 alone is still odd
        assert resolve(environ={"SLURM_PROCID": "3"}) == (0, 1)
    assert "SLURM_PROCID is set without SLURM_NTASKS" in caplog.text


def test_array_task_id_is_the_shard_with_num_shards(caplog):
    # a rerun of tasks 1 and 3 of --array=0-3: Slurm reports 2 tasks, MIN 1, MAX 3
    rerun = {"SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "3"}
    with caplog.at_level(logging.INFO, logger="src.sharding"):
        assert [resolve(num_shards=4, environ={**rerun, "SLURM_ARRAY_TASK_ID": i}) for i in "13"] == [(1, 4), (3, 4)]
    assert "array task 3 is shard 3/4 (this array has 2 task(s): a partial run or rerun)" in caplog.text
    # a full array logs nothing about it
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="src.sharding"):
        assert resolve(num_shards=4, environ={"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
    assert caplog.records == []
    with pytest.raises(ValueError, match="SLURM_ARRAY_TASK_ID=4 is not a shard of --num_shards 4"):
        resolve(num_shards=4, environ={"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"})


def test_torque_array_id():
    assert resolve(num_shards=5, environ={"PBS_ARRAYID": "4"}) == (4, 5)
    with pytest.raises(ValueError, match="PBS_ARRAYID is set but --num_shards is not"):
        resolve(environ={"PBS_ARRAYID": "4"})
    with pytest.raises(ValueError, match="PBS_ARRAYID: shard index 5 not in 0..4"):
        resolve(num_shards=5, environ={"PBS_ARRAYID": "5"})


def test_defaults_to_os_environ(monkeypatch):
    for name in ["RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_ARRAY_TASK_ID",
                 "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "PBS_ARRAY_INDEX"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert resolve() == (1, 3)


# --------------------------------------------------------------------------- select_shard


@pytest.mark.parametrize("count", [1, 2, 3, 7, 12])
def test_select_shard_disjoint_and_complete(count):
    items = [Path(f"dir/{name}.png") for name in "qwertyuiopasdf"]  # 14 items, unsorted
    shards = [sharding.select_shard(items, i, count) for i in range(count)]
    union = list(itertools.chain.from_iterable(shards))
    assert sorted(union) == sorted(items)
    assert len(union) == len(set(union)) == len(items)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1  # balanced


def test_select_shard_is_order_independent():
    items = [f"f{i:03d}" for i in range(20)]
    assert sharding.select_shard(items, 1, 3) == sharding.select_shard(reversed(items), 1, 3)
    assert sharding.select_shard(items, 1, 3) == items[1::3]
    assert sharding.select_shard([], 0, 2) == []


@pytest.mark.parametrize("index, count", [(3, 3), (-1, 3), (0, 0)])
def test_select_shard_invalid(index, count):
    with pytest.raises(ValueError):
        sharding.select_shard(["a"], index, count)


# --------------------------------------------------------------------------- local_device


@pytest.fixture
def fake_cuda(monkeypatch):
    def set_gpus(n):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return set_gpus


def test_local_device_without_cuda(fake_cuda):
    fake_cuda(0)
    assert sharding.local_device("auto", environ={"LOCAL_RANK": "2"}) == "cpu"
    assert sharding.local_device("cpu", environ={}) == "cpu"


def test_local_device_with_cuda(fake_cuda):
    fake_cuda(4)
    assert sharding.local_device("auto", environ={}) == "cuda:0"
    assert sharding.local_device("auto", environ={"LOCAL_RANK": "2"}) == "cuda:2"
    assert sharding.local_device("auto", environ={"SLURM_LOCALID": "3"}) == "cuda:3"
    both = {"LOCAL_RANK": "1", "SLURM_LOCALID": "3"}
    assert sharding.local_device("auto", environ=both) == "cuda:1"
    assert sharding.local_device("cuda", environ={"LOCAL_RANK": "2"}) == "cuda:2"
    assert sharding.local_device("cuda:3", environ={"LOCAL_RANK": "2"}) == "cuda:3"
    assert sharding.local_device("cpu", environ={"LOCAL_RANK": "2"}) == "cpu"


def test_local_device_one_visible_gpu_per_task(fake_cuda):
    fake_cuda(1)  # scheduler bound one GPU to this task
    assert sharding.local_device("auto", environ={"SLURM_LOCALID": "3"}) == "cuda:0"


def test_local_device_bad_local_rank(fake_cuda):
    fake_cuda(2)
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        sharding.local_device("auto", environ={"LOCAL_RANK": "gpu0"})


def test_balance_by_weight_is_even_within_one_item_and_the_same_everywhere():
    weights = [1, 2, 3, 4, 5, 2, 4]
    owners = sharding.balance_by_weight(weights, 3)
    loads = [sum(w for w, o in zip(weights, owners) if o == k) for k in range(3)]
    assert owners == [2, 2, 1, 1, 0, 0, 2] and loads == [7, 7, 7]  # 5+2, 4+3, 4+2+1
    assert max(loads) - min(loads) <= max(weights)
    assert sharding.balance_by_weight(weights, 3) == owners  # every process computes the same split
    assert sharding.balance_by_weight([0, 0, 5], 2) == [1, 1, 0]  # the heaviest first, ties to the lower shard
    assert sharding.balance_by_weight([], 4) == []
    with pytest.raises(ValueError, match="shard count must be >= 1"):
        sharding.balance_by_weight([1], 0)
