"""Decide which part of the input list this process handles, and on which device."""

from __future__ import annotations

import logging
import os
import re
from typing import Iterable, Mapping, Sequence

logger = logging.getLogger(__name__)

# (index variable, count variable) in order of precedence.
_ENV_PAIRS = (
    ("RANK", "WORLD_SIZE"),  # torchrun / torch.distributed
    ("SLURM_PROCID", "SLURM_NTASKS"),  # srun with several tasks
)

_NO_INDEX = "--num_shards given but no shard index (--shard or an array-index variable)"


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    """Integer value of an environment variable; None when unset or empty."""
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _parse_shard(shard: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(shard))
    if not match:
        raise ValueError(f"--shard {shard!r}: expected 'i/N' with 0 <= i < N")
    index, count = int(match.group(1)), int(match.group(2))
    if not 0 <= index < count:
        raise ValueError(f"--shard {shard!r}: expected 'i/N' with 0 <= i < N")
    return index, count


def _check(index: int, count: int, source: str, num_shards: int | None) -> tuple[int, int]:
    if count < 1:
        raise ValueError(f"{source}: shard count {count} must be >= 1")
    if not 0 <= index < count:
        raise ValueError(f"{source}: shard index {index} not in 0..{count - 1}")
    if num_shards is not None and num_shards != count:
        raise ValueError(f"{source} gives {count} shards but --num_shards is {num_shards}")
    return index, count


def _slurm_array(environ: Mapping[str, str], num_shards: int | None) -> tuple[int, int] | None:
    task_id = _env_int(environ, "SLURM_ARRAY_TASK_ID")
    if task_id is None:
        return None
    if num_shards is not None:
        # With the shard count given, the task id is the shard: `sbatch --array=3,5` (redoing two
        # failed tasks) then runs shards 3 and 5 of the same split, whatever the array looks like.
        if not 0 <= task_id < num_shards:
            raise ValueError(
                f"SLURM_ARRAY_TASK_ID={task_id} is not a shard of --num_shards {num_shards}: with "
                f"--num_shards the array task id is the shard index, so use --array=0-{num_shards - 1} "
                "(or a subset of those ids to rerun some shards)")
        count = _env_int(environ, "SLURM_ARRAY_TASK_COUNT")
        if count is not None and count != num_shards:
            logger.info("array task %d is shard %d/%d (this array has %d task(s): a partial run or rerun)",
                        task_id, task_id, num_shards, count)
        return task_id, num_shards
    # --array=5-9 numbers tasks from 5; --array=0-10:2 steps by 2.
    index = task_id - (_env_int(environ, "SLURM_ARRAY_TASK_MIN") or 0)
    step = _env_int(environ, "SLURM_ARRAY_TASK_STEP") or 1
    if step > 1 and index % step == 0:
        index //= step
    count = _env_int(environ, "SLURM_ARRAY_TASK_COUNT")
    if count is None:
        raise ValueError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --num_shards")
    return _check(index, count, "SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT", num_shards)


def _pbs_array(environ: Mapping[str, str], num_shards: int | None) -> tuple[int, int] | None:
    # PBS Pro / OpenPBS set PBS_ARRAY_INDEX, Torque PBS_ARRAYID; neither exports the array size,
    # so the index is the shard of --num_shards (a subset of indices reruns those shards).
    for name in ("PBS_ARRAY_INDEX", "PBS_ARRAYID"):
        index = _env_int(environ, name)
        if index is not None:
            if num_shards is None:
                raise ValueError(f"{name} is set but --num_shards is not")
            return _check(index, num_shards, name, num_shards)
    return None


def resolve_shard(
    shard: str | None = None,
    num_shards: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[int, int]:
    """``(index, count)`` of this process's shard.

    Precedence: ``shard`` ("i/N"), RANK/WORLD_SIZE, SLURM_PROCID/SLURM_NTASKS,
    SLURM_ARRAY_TASK_ID (with ``num_shards``: the task id is the shard index, so a
    rerun of some task ids redoes those shards; without: minus SLURM_ARRAY_TASK_MIN,
    of SLURM_ARRAY_TASK_COUNT), PBS_ARRAY_INDEX or Torque's PBS_ARRAYID with
    ``num_shards``; otherwise (0, 1). A variable pair whose count is 1 is skipped,
    because Slurm jobs may set SLURM_NTASKS=1 and plain scripts WORLD_SIZE=1. A
    SLURM_PROCID of 0 alone is what every Slurm batch script gets (SLURM_NTASKS is
    only set with --ntasks), so it is skipped quietly.
    """
    environ = os.environ if environ is None else environ
    if num_shards is not None and int(num_shards) < 1:
        raise ValueError(f"--num_shards {num_shards}: must be >= 1")

    if shard is not None and str(shard).strip() != "":
        index, count = _parse_shard(shard)
        return _check(index, count, f"--shard {shard!r}", num_shards)

    for index_var, count_var in _ENV_PAIRS:
        index, count = _env_int(environ, index_var), _env_int(environ, count_var)
        if index is None and count is None:
            continue
        if index is None or count is None:
            if index_var == "SLURM_PROCID" and index == 0:
                continue  # the batch script of any Slurm job, array tasks included
            # A lone RANK or WORLD_SIZE is more likely another tool's than a launcher's.
            logger.warning(
                "%s is set without %s; ignoring it for sharding",
                index_var if index is not None else count_var,
                count_var if index is not None else index_var,
            )
            continue
        if count == 1 and index == 0:
            continue
        return _check(index, count, f"{index_var}/{count_var}", num_shards)

    array = _slurm_array(environ, num_shards)
    if array is not None:
        return array

    pbs = _pbs_array(environ, num_shards)
    if pbs is not None:
        return pbs

    if num_shards is not None and num_shards != 1:
        raise ValueError(_NO_INDEX)
    return 0, 1


def select_shard(items: Iterable, index: int, count: int) -> list:
    """Items of shard ``index`` of ``count``: ``sorted(items)[index::count]``.

    Sorting first makes the split independent of discovery order, so every
    process computes the same partition.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: expected 0 <= index < count")
    return sorted(items)[index::count]


def balance_by_weight(weights: Sequence[int], count: int) -> list[int]:
    """The shard of each item, so that the shards' total weights are as even as whole items allow:
    the heaviest item first, each to the lightest shard so far (ties: the lower shard). The result
    depends only on the weights, so every process computes the same split; the heaviest shard ends
    at most one item's weight above the lightest."""
    if count < 1:
        raise ValueError(f"shard count must be >= 1, got {count}")
    loads, owners = [0] * count, [0] * len(weights)
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        owner = min(range(count), key=lambda k: (loads[k], k))
        owners[i] = owner
        loads[owner] += weights[i]
    return owners


def _local_rank(environ: Mapping[str, str]) -> int:
    for name in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = _env_int(environ, name)
        if value is not None:
            if value < 0:
                raise ValueError(f"environment variable {name}={value} is negative")
            return value
    return 0


def local_device(device: str = "auto", environ: Mapping[str, str] | None = None) -> str:
    """Torch device string for this process.

    "auto" picks the local rank's GPU (LOCAL_RANK, else SLURM_LOCALID, else 0) when
    CUDA is available, otherwise "cpu"; "cuda" picks the local rank's GPU; any
    other value ("cuda:3", "cpu", "mps") is returned unchanged. The local rank is
    taken modulo the visible GPU count, since schedulers that bind one GPU per
    task (CUDA_VISIBLE_DEVICES) show every task its GPU as cuda:0.
    """
    environ = os.environ if environ is None else environ
    device = str(device).strip()
    if device not in ("auto", "cuda"):
        return device

    import torch

    available = torch.cuda.is_available()
    if device == "auto" and not available:
        return "cpu"
    rank = _local_rank(environ)
    visible = torch.cuda.device_count() if available else 0
    if visible > 0:
        rank %= visible
    return f"cuda:{rank}"
