"""Noticing a peer that is gone within dead_peer_timeout_s, instead of dist_timeout_s.

Each rank runs two threads beside the training loop. The beat thread adds one to this rank's
counter in the group's store (the TCPStore at MASTER_ADDR:MASTER_PORT that every rank of the group
reaches) and reads the counter of the next rank, every interval. The judge thread ends this rank
with DEAD_PEER_EXIT, so that torchrun restarts the group without waiting on the gone peer, when
the next rank's counter stood still for dead_peer_timeout_s (its process is gone or frozen, or its
host is lost) or the store gave no answer for that long (it lives on the master's host).

How this tells a dead peer from a slow one: the counters move on threads of their own, whatever
the training loop does, so a slow step, a long evaluation or a large checkpoint keeps them moving;
only a process that no longer runs stops its counter. Each rank watches one peer (the ring of
ranks), so that the store answers two requests per rank and beat whatever the world size: when
any rank is gone, the rank before it in the ring notices, and torchrun restarts every rank.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import uuid
from datetime import timedelta
from typing import Callable

import torch.distributed as dist

from . import distributed
from .distributed import DistEnv

DEAD_PEER_EXIT = 69  # EX_UNAVAILABLE: a peer or the group's store is gone; torchrun restarts the group
BEATS_PER_TIMEOUT = 4
LONGEST_BEAT_S = 5.0


def beat_interval(timeout_s: float) -> float:
    """Seconds between two beats: a few per timeout, so that one late answer is no verdict."""
    return min(LONGEST_BEAT_S, timeout_s / BEATS_PER_TIMEOUT)


class PeerWatch:
    def __init__(self, env: DistEnv, timeout_s: float, group_key: str, connect: Callable[[float], object],
                 on_dead: Callable[[str], None], clock: Callable[[], float] = time.monotonic):
        self.env, self.timeout_s, self.interval = env, timeout_s, beat_interval(timeout_s)
        self.watched = (env.rank + 1) % env.world_size
        self._own_key = f"chargpt/alive/{group_key}/{env.rank}"
        self._watched_key = f"chargpt/alive/{group_key}/{self.watched}"
        self._connect, self._on_dead, self._clock = connect, on_dead, clock
        self._store = None
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        started = clock()
        self._answered_at = started  # the store's last answer
        self._watched_count, self._watched_moved_at = -1, started

    def start(self) -> PeerWatch:
        for target, name in ((self._beat_forever, "chargpt-beat"), (self._judge_forever, "chargpt-judge")):
            threading.Thread(target=target, name=name, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()

    def beat(self) -> None:
        """One round: add one to this rank's counter and read the watched rank's."""
        try:
            self._store = self._store or self._connect(self.interval)
            self._store.add(self._own_key, 1)
            count = self._store.add(self._watched_key, 0)
        except Exception:  # the store did not answer: verdict() decides when that lasted too long
            self._store = None
            return
        with self._lock:
            now = self._clock()
            self._answered_at = now
            if count != self._watched_count:
                self._watched_count, self._watched_moved_at = count, now

    def verdict(self) -> str | None:
        """Why this rank must give the group up now, or None."""
        now = self._clock()
        with self._lock:
            silent_store, silent_peer = now - self._answered_at, now - self._watched_moved_at
        if silent_store > self.timeout_s:
            return (f"the group's store at {self.env.master_addr}:{self.env.master_port} (on the master's host) "
                    f"did not answer for {silent_store:.0f} s")
        if silent_peer > self.timeout_s:
            return f"rank {self.watched} gave no sign of life for {silent_peer:.0f} s (its process or host is gone)"
        return None

    def _beat_forever(self) -> None:
        while not self._stopped.is_set():
            self.beat()
            self._stopped.wait(self.interval)

    def _judge_forever(self) -> None:
        while not self._stopped.wait(self.interval):
            reason = self.verdict()
            if reason and not self._stopped.is_set():
                self._on_dead(f"rank {self.env.rank}: {reason}, more than dead_peer_timeout_s="
                              f"{self.timeout_s:g}. Exiting ({DEAD_PEER_EXIT}) so that torchrun restarts the group.")


def exit_dead_peer(message: str) -> None:
    """Leave at once: the training loop may sit in a collective that never returns."""
    print(f"[chargpt] {message}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(DEAD_PEER_EXIT)


def watch_peers(env: DistEnv, timeout_s: float) -> PeerWatch | None:
    """Start watching the group this rank just joined; None without a group."""
    if not (env.is_distributed and dist.is_initialized()):
        return None
    # One key space per group: ranks of an earlier group (before a restart) left counters behind.
    group_key = distributed.broadcast_bytes(uuid.uuid4().hex.encode() if env.is_main else None, src=0).decode()

    def connect(timeout: float):
        return dist.TCPStore(env.master_addr, env.master_port, is_master=False,
                             timeout=timedelta(seconds=timeout), wait_for_workers=False)

    return PeerWatch(env, timeout_s, group_key, connect, exit_dead_peer).start()
