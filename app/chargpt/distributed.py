"""Process-group setup from the torchrun environment, and the Gloo network interface choice."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .network import DistributedError, pick_interface


class PeerFailure(RuntimeError):
    """A collective failed because a peer hung (timeout) or died; torchrun may restart the group."""


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def read_env(environ=None) -> DistEnv:
    """The standard torchrun variables; without WORLD_SIZE this is a single process."""
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ:
        return DistEnv()
    values = {}
    for key, name, default in (("rank", "RANK", None), ("local_rank", "LOCAL_RANK", "0"),
                               ("world_size", "WORLD_SIZE", None),
                               ("local_world_size", "LOCAL_WORLD_SIZE", "1"),
                               ("master_port", "MASTER_PORT", "29500")):
        raw = environ.get(name, default)
        if raw is None:
            raise DistributedError(f"{name} is not set although WORLD_SIZE is; launch with torchrun")
        try:
            values[key] = int(raw)
        except ValueError:
            raise DistributedError(f"{name}='{raw}' is not an integer; launch with torchrun") from None
    env = DistEnv(master_addr=environ.get("MASTER_ADDR", "127.0.0.1"), **values)
    if env.world_size < 1 or not 0 <= env.rank < env.world_size:
        raise DistributedError(f"RANK={env.rank} is not within WORLD_SIZE={env.world_size}")
    return env


def check_node_rank(environ=None) -> None:
    """Under a rendezvous that numbers the nodes itself, this host must get its inventory rank."""
    environ = os.environ if environ is None else environ
    node_rank, group_rank = environ.get("NODE_RANK"), environ.get("GROUP_RANK")
    if node_rank is None or group_rank is None or node_rank.strip() == group_rank.strip():
        return
    raise DistributedError(
        f"NODE_RANK={node_rank} (this host's rank in the inventory) differs from GROUP_RANK={group_rank} "
        "(the node rank torchrun's rendezvous gave it): global rank 0 must run on the host that holds "
        "the run directory (node rank 0), or checkpoints and outputs land on the wrong host; give "
        "torchrun a --local-addr that sorts in node-rank order, or fix the ranks in the inventory")


def peer_failure(error: BaseException, rank: int, timeout_s: float) -> PeerFailure | None:
    """The clear message for a collective that a hung or dead peer broke, or None for other errors.

    Gloo raises a plain RuntimeError from the blocked call (DDP's backward all-reduce, an eval
    all-reduce, a broadcast): "Timed out waiting Nms for recv operation to complete" when a peer
    hangs, "Connection closed by peer" or "reset by peer" when it died. A collective that shared the
    timed-out pair with the one that timed out (the stop vote runs beside DDP's all-reduce) fails
    with "Application timeout caused pair closure"."""
    text = str(error)
    if "Timed out waiting" in text or "timeout caused pair closure" in text:
        what = f"a collective timed out after {timeout_s:g} s (dist_timeout_s); a peer hung or died"
    elif "closed by peer" in text or "reset by peer" in text:
        what = "a peer closed its connection during a collective; it died or was restarted"
    else:
        return None
    return PeerFailure(f"rank {rank}: {what}. Exiting so that torchrun restarts the group.")


def configure_socket_interfaces(env: DistEnv, log, environ=os.environ) -> None:
    """Fill in GLOO_SOCKET_IFNAME when it is unset or 'auto' with the interface that reaches the
    master, and NCCL_SOCKET_IFNAME (NCCL's bootstrap and socket transport) with the same one unless
    it is set: on the host network a host has several interfaces, and the default route's may not
    be the one toward the other hosts."""
    if environ.get("GLOO_SOCKET_IFNAME", "auto") not in ("", "auto"):
        log(f"GLOO_SOCKET_IFNAME={environ['GLOO_SOCKET_IFNAME']} (set by the environment)")
    else:
        name, reason = pick_interface(env.master_addr)
        environ["GLOO_SOCKET_IFNAME"] = name
        log(f"GLOO_SOCKET_IFNAME=auto: using interface {name}: {reason}")
    if environ.get("NCCL_SOCKET_IFNAME", ""):
        log(f"NCCL_SOCKET_IFNAME={environ['NCCL_SOCKET_IFNAME']} (set by the environment)")
    else:
        environ["NCCL_SOCKET_IFNAME"] = environ["GLOO_SOCKET_IFNAME"]
        log(f"NCCL_SOCKET_IFNAME={environ['NCCL_SOCKET_IFNAME']} (the Gloo interface)")


def choose_device(preference: str, env: DistEnv) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise DistributedError("device=cuda but CUDA is not available; use device=cpu or auto")
        torch.cuda.set_device(env.local_rank)
        return torch.device("cuda", env.local_rank)
    return torch.device("cpu")


def init_process_group(env: DistEnv, device: torch.device, timeout_s: float, log) -> None:
    """Join the process group: NCCL on CUDA, Gloo on CPU. A single process needs none, and says so:
    the deployment's start wait reads this line as "joined" (roles/cluster/files/read_trainer.py)."""
    if not env.is_distributed:
        log("process group: backend=none world_size=1 (a single process needs none)")
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    configure_socket_interfaces(env, log)
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s),
                            device_id=device if backend == "nccl" else None)
    log(f"process group: backend={backend} world_size={env.world_size} "
        f"master={env.master_addr}:{env.master_port}")


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def shutdown() -> None:
    global _control_group
    if dist.is_initialized():
        dist.destroy_process_group()
    _control_group = None


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
        values /= dist.get_world_size()
    return values


_control_group = None  # made by control_group() once the process group exists


def control_group():
    """The group for the trainer's own small CPU messages (votes, RNG states, checkpoints sent to a
    host that lacks one): the default group under Gloo, a Gloo group beside NCCL's on GPUs, so that
    these never wait on the GPU. None when there is no process group."""
    global _control_group
    if not dist.is_initialized():
        return None
    if _control_group is None:
        _control_group = (dist.new_group(backend="gloo") if dist.get_backend() != "gloo"
                          else dist.GroupMember.WORLD)
    return _control_group


def all_gather_ints(value: int) -> list[int]:
    """Every rank's value, in rank order."""
    if not dist.is_initialized():
        return [value]
    gathered = [torch.zeros(1, dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, torch.tensor([value], dtype=torch.int64), group=control_group())
    return [int(item.item()) for item in gathered]


def all_gather_bytes(data: bytes) -> list[bytes]:
    """Every rank's bytes, in rank order (as uint8 tensors padded to the longest)."""
    if not dist.is_initialized():
        return [data]
    lengths = all_gather_ints(len(data))
    padded = torch.zeros(max(lengths), dtype=torch.uint8)
    if data:
        padded[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    gathered = [torch.empty(max(lengths), dtype=torch.uint8) for _ in lengths]
    dist.all_gather(gathered, padded, group=control_group())
    return [bytes(item[:length].numpy()) for item, length in zip(gathered, lengths)]


def broadcast_bytes(data: bytes | None, src: int) -> bytes:
    """src's bytes on every rank; the others pass None."""
    if not dist.is_initialized():
        return data
    is_source = dist.get_rank() == src
    length = torch.tensor([len(data) if is_source else 0], dtype=torch.int64)
    dist.broadcast(length, src=src, group=control_group())
    buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if is_source and data
              else torch.empty(int(length.item()), dtype=torch.uint8))
    if buffer.numel():
        dist.broadcast(buffer, src=src, group=control_group())
    return bytes(buffer.numpy())


def send_bytes(data: bytes, dst: int) -> None:
    dist.send(torch.tensor([len(data)], dtype=torch.int64), dst=dst, group=control_group())
    dist.send(torch.frombuffer(bytearray(data), dtype=torch.uint8), dst=dst, group=control_group())


def receive_bytes(src: int) -> torch.Tensor:
    """What send_bytes sent, as a uint8 tensor (tensor_tree.unpack reads it without a copy)."""
    length = torch.zeros(1, dtype=torch.int64)
    dist.recv(length, src=src, group=control_group())
    buffer = torch.empty(int(length.item()), dtype=torch.uint8)
    dist.recv(buffer, src=src, group=control_group())
    return buffer
