"""A planned stop that loses no step: SIGTERM (docker stop, compose replacing a container, torchrun
passing its own SIGTERM on) only raises a flag; at every step boundary the ranks vote, and when
any rank was asked to stop they all write a checkpoint of that step and leave together.

The vote is an all-reduce (MAX) of one number on the control group, started before the step's
work and read after it, so it overlaps the step instead of adding a round trip to it.
"""

from __future__ import annotations

import signal

import torch
import torch.distributed as dist

from . import distributed

PEER_STOPPED_EXIT = 75  # EX_TEMPFAIL: a peer stopped on purpose; torchrun restarts this group


class StoppedOnRequest(Exception):
    """This rank got SIGTERM: the checkpoint of this step is written; it exits 0."""


class PeerStopped(RuntimeError):
    """Another rank was asked to stop: the checkpoint of this step is written; exit so that torchrun
    restarts the group, which then resumes from that checkpoint."""


class StopVote:
    def __init__(self):
        self.requested = False  # this process got SIGTERM
        self._flag = torch.zeros(1, dtype=torch.int32)
        self._work = None
        self._previous = signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.requested = True

    def start(self) -> None:
        """Cast this rank's vote for the step about to run."""
        self._flag.fill_(int(self.requested))
        if dist.is_initialized():
            self._work = dist.all_reduce(self._flag, op=dist.ReduceOp.MAX, group=distributed.control_group(),
                                         async_op=True)

    def agreed(self) -> bool:
        """Whether any rank voted to stop at the step that just ran (the same answer on every rank)."""
        if self._work is not None:
            self._work.wait()
            self._work = None
        return bool(self._flag.item())

    def close(self) -> None:
        """Give SIGTERM back its previous handler."""
        signal.signal(signal.SIGTERM, self._previous)
