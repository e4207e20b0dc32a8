"""`chargpt probe`: the network checks the deployment runs between the hosts before training, in
containers of the trainer image on the overlay (roles/network_probe/tasks/main.yml).

- `serve`: a UDP echo server that every other host's `peers` talks to.
- `peers`: to each peer, the round-trip time of small datagrams, and whether a datagram of the
  full MTU of the interface that reaches it crosses with fragmentation forbidden (an overlay
  whose MTU the path underneath cannot carry loses exactly those).
- `interface`: the interface the trainer's GLOO_SOCKET_IFNAME=auto picks to reach the master, and
  whether it is the one the kernel routes the master's address over.
- `allreduce`: a Gloo all-reduce of a gradient-sized float32 tensor across every host
  (RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT from the environment), timed; rank 0 prints the
  bus bandwidth, the figure NCCL's tests print (2(n-1)/n of the bytes per second).
`peers` and `interface` first give each peer up to --settle seconds to resolve and answer: the
swarm's gossip tells the other hosts about a container started a moment ago within seconds.
Each prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time
from datetime import timedelta
from pathlib import Path

from .network import DistributedError, pick_interface, resolve_ipv4

IP_HEADERS = 28  # IPv4 (20) and UDP (8) headers: a datagram's payload is the MTU less these
MAX_UDP_PAYLOAD = 65507
# Linux's values; Python's socket module names them from 3.12 on.
IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)  # never fragment, not even along the path
ECHO_TIMEOUT_S = 1.0
MTU_TRIES = 3
# A probe container started on another host a moment ago reaches this host's overlay by the swarm's
# gossip: its name, then its path, within seconds. Wait up to this long for both before measuring.
SETTLE_S = 20.0


def _dont_fragment(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)


def serve(port: int, ready: threading.Event | None = None, stop: threading.Event | None = None) -> None:
    """Echo every datagram back to its sender, forever (or until stop is set)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        _dont_fragment(sock)
        sock.bind(("0.0.0.0", port))
        sock.settimeout(0.2)
        if ready:
            ready.set()
        while not (stop and stop.is_set()):
            try:
                data, sender = sock.recvfrom(65535)
            except socket.timeout:
                continue
            try:
                sock.sendto(data, sender)
            except OSError:
                continue  # a datagram the way back cannot carry: the sender sees it lost


def interface_mtu(name: str) -> int:
    return int(Path(f"/sys/class/net/{name}/mtu").read_text())


def _echo(sock: socket.socket, address: tuple[str, int], payload: bytes) -> float | None:
    """Seconds until payload came back, or None when it did not within ECHO_TIMEOUT_S."""
    started = time.perf_counter()
    try:
        sock.sendto(payload, address)
    except OSError:
        return None  # larger than this host's own interface allows
    deadline = started + ECHO_TIMEOUT_S
    while (left := deadline - time.perf_counter()) > 0:
        sock.settimeout(left)
        try:
            data, _ = sock.recvfrom(65535)
        except socket.timeout:
            return None
        if data == payload:
            return time.perf_counter() - started
    return None


def resolve_when_known(host: str, deadline: float) -> str:
    """host's IPv4 address once the resolver knows it, trying until deadline (time.monotonic())."""
    while True:
        try:
            return resolve_ipv4(host)
        except DistributedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.25)


def answers(sock: socket.socket, address: tuple[str, int], deadline: float) -> bool:
    """Whether the echo server at address answers one datagram before deadline (time.monotonic())."""
    while time.monotonic() < deadline:
        if _echo(sock, address, b"chargpt-probe-hello") is not None:
            return True
    return False


def probe_peer(peer: str, port: int, count: int, deadline: float | None = None) -> dict:
    """Round trips to one peer's echo server, and one datagram of the full MTU with DF set. The peer
    has until deadline (time.monotonic(); default SETTLE_S from now) to resolve and first answer."""
    deadline = time.monotonic() + SETTLE_S if deadline is None else deadline
    result = {"peer": peer, "address": None, "rtt_ms": None, "rtt_max_ms": None, "lost": count, "mtu": None,
              "mtu_ok": False, "error": None}
    try:
        address = resolve_when_known(peer, deadline)
        interface, _ = pick_interface(peer)
    except Exception as error:  # noqa: BLE001 - the message is the result
        result["error"] = str(error)
        return result
    result.update(address=address, mtu=interface_mtu(interface))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        _dont_fragment(sock)
        if not answers(sock, (address, port), deadline):
            result["error"] = f"no echo from {peer} ({address}) port {port}/udp"
            return result
        times = [rtt for index in range(count)
                 if (rtt := _echo(sock, (address, port), b"chargpt-probe-%06d" % index)) is not None]
        full = b"M" * min(result["mtu"] - IP_HEADERS, MAX_UDP_PAYLOAD)
        result["mtu_ok"] = any(_echo(sock, (address, port), full) is not None for _ in range(MTU_TRIES))
    result["lost"] = count - len(times)
    if times:
        result["rtt_ms"] = round(statistics.median(times) * 1000, 3)
        result["rtt_max_ms"] = round(max(times) * 1000, 3)
    else:
        result["error"] = f"no echo from {peer} ({address}) port {port}/udp"
    return result


def probe_peers(peers: list[str], port: int, count: int, settle_s: float = SETTLE_S) -> dict:
    deadline = time.monotonic() + settle_s
    return {"host": socket.gethostname(), "peers": [probe_peer(peer, port, count, deadline) for peer in peers]}


def probe_interface(master: str, configured: str, settle_s: float = SETTLE_S) -> dict:
    """The interface auto picks for the master, the one configured (unless auto), and whether the
    configured one is the one that reaches it. The master has settle_s to resolve."""
    resolve_when_known(master, time.monotonic() + settle_s)
    routed, reason = pick_interface(master)
    used = routed if configured in ("", "auto") else configured
    return {"master": master, "routed": routed, "reason": reason, "configured": configured or "auto",
            "used": used, "reaches_master": used == routed, "mtu": interface_mtu(routed)}


def bus_bandwidth_mb_s(nbytes: int, world_size: int, seconds: float) -> float:
    """The all-reduce's bus bandwidth in MB/s: each rank sends and receives 2(n-1)/n of the data."""
    return 2 * (world_size - 1) / world_size * nbytes / seconds / 1e6


def allreduce(nbytes: int, iterations: int, timeout_s: float) -> dict | None:
    """Time a Gloo all-reduce of nbytes of float32 over the group the environment describes."""
    import torch
    import torch.distributed as dist

    from .distributed import configure_socket_interfaces, read_env

    env = read_env()
    configure_socket_interfaces(env, log=lambda message: None)
    dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_s))
    try:
        tensor = torch.ones(max(1, nbytes // 4), dtype=torch.float32)
        for _ in range(2):
            dist.all_reduce(tensor)
        times = []
        for _ in range(iterations):
            dist.barrier()
            started = time.perf_counter()
            dist.all_reduce(tensor)
            times.append(time.perf_counter() - started)
        # Every rank's median, so that rank 0 reports the slowest host's view.
        medians = torch.tensor([statistics.median(times)], dtype=torch.float64)
        dist.all_reduce(medians, op=dist.ReduceOp.MAX)
    finally:
        dist.destroy_process_group()
    if not env.is_main:
        return None
    seconds = medians.item()
    return {"world_size": env.world_size, "bytes": tensor.numel() * 4, "iterations": iterations,
            "time_ms": round(seconds * 1000, 3),
            "bus_bandwidth_mb_s": round(bus_bandwidth_mb_s(tensor.numel() * 4, env.world_size, seconds), 1)}


def add_commands(parser: argparse.ArgumentParser) -> None:
    """The probe's commands, under `chargpt probe`."""
    probes = parser.add_subparsers(dest="probe", required=True)
    serve_parser = probes.add_parser("serve", help="echo UDP datagrams back, forever")
    serve_parser.add_argument("--port", type=int, required=True)
    peers = probes.add_parser("peers", help="round-trip time and full-MTU datagrams to each peer's echo server")
    peers.add_argument("--port", type=int, required=True)
    peers.add_argument("--count", type=int, default=20, help="round trips per peer")
    peers.add_argument("peers", nargs="+", metavar="PEER")
    interface = probes.add_parser("interface", help="the interface that reaches the master")
    interface.add_argument("--target", required=True, help="the master's name or address")
    interface.add_argument("--configured", default="auto", help="GLOO_SOCKET_IFNAME as deployed")
    for command in (peers, interface):
        command.add_argument("--settle", type=float, default=SETTLE_S,
                             help=f"seconds a peer has to resolve and first answer (default: {SETTLE_S:g})")
    reduce = probes.add_parser("allreduce", help="time a Gloo all-reduce over the group in the environment")
    reduce.add_argument("--bytes", type=int, required=True, help="size of the reduced tensor")
    reduce.add_argument("--iterations", type=int, default=10)
    reduce.add_argument("--timeout", type=float, default=120, help="seconds to wait for every host")


def run(args: argparse.Namespace) -> int:
    if args.probe == "serve":
        serve(args.port)
        return 0
    if args.probe == "peers":
        result = probe_peers(args.peers, args.port, args.count, args.settle)
    elif args.probe == "interface":
        result = probe_interface(args.target, args.configured, args.settle)
    else:
        result = allreduce(args.bytes, args.iterations, args.timeout)
    if result is not None:
        print(json.dumps(result))
    return 0
