"""Every host keeps the run, so that losing any host, the master included, loses at most the steps
since the newest checkpoint.

Each host's first process writes every checkpoint to its own host's run directory (train.py's
Checkpointer). At start, every rank reports the newest checkpoint of its host that loads and matches
its digest; the group resumes from the newest that any host has, and the first rank that has it
sends it, packed as tensors (tensor_tree), to the ranks whose host lacks it; they verify the copy
against its digest, and their host keeps it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from . import checkpoint, distributed, tensor_tree
from .config import TrainConfig
from .data import Corpus
from .distributed import DistEnv
from .resume import Resume, check_resumable

NO_CHECKPOINT = -1


def agree_on_resume(resume: Resume, env: DistEnv, run_dir: Path, config: TrainConfig, corpus: Corpus,
                    log: Callable[[str], None], warn: Callable[[str], None]) -> dict | None:
    """The checkpoint state every rank resumes from, or None to start from step 0."""
    own_step = NO_CHECKPOINT if resume.state is None else resume.step
    steps = distributed.all_gather_ints(own_step)
    newest = max(steps)
    if newest == NO_CHECKPOINT:
        return None
    source = steps.index(newest)
    lacking = [rank for rank, step in enumerate(steps) if step < newest]
    if env.is_main:
        log(f"resume agreement: newest checkpoint is step {newest}, on rank(s) "
            f"{describe_ranks([rank for rank, step in enumerate(steps) if step == newest])}"
            + (f"; rank {source} sends it to rank(s) {describe_ranks(lacking)}" if lacking else ""))
    if env.rank == source and lacking:
        packed = tensor_tree.pack(resume.state)
        for rank in lacking:
            distributed.send_bytes(packed, rank)
    if env.rank not in lacking:
        return resume.state
    state = checkpoint.verify(tensor_tree.unpack(distributed.receive_bytes(source)),
                              f"the checkpoint of step {newest} received from rank {source}", warn)
    check_resumable(run_dir, state, config, corpus, warn)
    if env.local_rank == 0:
        path = checkpoint.save_checkpoint(run_dir, newest, state, config.keep_checkpoints)
        had = "no checkpoint" if own_step == NO_CHECKPOINT else f"only step {own_step}"
        log(f"this host had {had}: received step {newest} from rank {source}, kept as {path.name}")
    return state


def describe_ranks(ranks: list[int]) -> str:
    """0-3,6 for [0, 1, 2, 3, 6]: short on a cluster of many ranks."""
    spans: list[list[int]] = []
    for rank in ranks:
        if spans and rank == spans[-1][1] + 1:
            spans[-1][1] = rank
        else:
            spans.append([rank, rank])
    return ",".join(str(first) if first == last else f"{first}-{last}" for first, last in spans)
