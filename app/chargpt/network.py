"""Which network interface reaches an address: the Gloo interface choice, with the standard library only
(the network probe uses it before any torch is loaded)."""

from __future__ import annotations

import array
import fcntl
import socket
import struct
import time
from typing import Callable

SIOCGIFCONF = 0x8912
_IFREQ_SIZE = 40  # struct ifreq on 64-bit Linux


class DistributedError(RuntimeError):
    """The torchrun environment or the network does not allow joining the process group."""


def local_ipv4_addresses() -> dict[str, str]:
    """Every IPv4 address of this host's interfaces, mapped to its interface name."""
    buffer = array.array("B", b"\0" * _IFREQ_SIZE * 256)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("iL", len(buffer), buffer.buffer_info()[0])
        length = struct.unpack("iL", fcntl.ioctl(sock.fileno(), SIOCGIFCONF, request))[0]
    raw = buffer.tobytes()[:length]
    addresses = {}
    for offset in range(0, length, _IFREQ_SIZE):
        name = raw[offset:offset + 16].split(b"\0", 1)[0].decode()
        address = socket.inet_ntoa(raw[offset + 20:offset + 24])
        addresses[address] = name.split(":", 1)[0]  # an alias label eth0:1 belongs to eth0
    return addresses


def resolve_ipv4(host: str) -> str:
    try:
        return socket.getaddrinfo(host, None, socket.AF_INET)[0][4][0]
    except socket.gaierror as error:
        raise DistributedError(f"MASTER_ADDR '{host}' does not resolve to an IPv4 address ({error}); "
                               "set MASTER_ADDR to the master's address or name") from None


def pick_interface(master_addr: str) -> tuple[str, str]:
    """(interface, reason): the interface to talk to master_addr over.

    On the master, the interface that holds the address (the kernel would route it over `lo`,
    which other hosts cannot reach). Elsewhere, the interface of the kernel's route to it.
    """
    address = resolve_ipv4(master_addr)
    local = local_ipv4_addresses()
    if address in local:
        return local[address], f"it holds {address}, the address of MASTER_ADDR={master_addr}"
    # Connecting a UDP socket sends nothing; it makes the kernel choose the route and source address.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.connect((address, 9))
        except OSError as error:
            raise DistributedError(f"no route to MASTER_ADDR {master_addr} ({address}): {error}") from None
        source = sock.getsockname()[0]
    if source not in local:
        raise DistributedError(f"the route to MASTER_ADDR {master_addr} uses source address {source}, "
                               "which no interface holds; set GLOO_SOCKET_IFNAME explicitly")
    return local[source], f"it routes to {address} (MASTER_ADDR={master_addr}) from {source}"


def wait_for_listener(host: str, port: int, timeout_s: float, log: Callable[[str], None],
                      interval_s: float = 1.0, report_every_s: float = 15.0) -> bool:
    """Whether host:port accepted a TCP connection within timeout_s, tried every interval_s.

    A worker asks this of the master's rendezvous before it starts torchrun: torchrun's own store
    client backs off up to a minute between tries, so a master that comes back (its host rebooted)
    would be found that much later. log says why it still waits, at the first failure and every
    report_every_s."""
    started = time.monotonic()
    reported = None
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(interval_s * 2, 5.0)):
                pass
        except OSError as error:
            waited = time.monotonic() - started
            if waited >= timeout_s:
                return False
            if reported is None or waited - reported >= report_every_s:
                log(f"waiting for the master's rendezvous at {host}:{port} ({waited:.0f} s of {timeout_s:.0f}): "
                    f"{_describe(error)}")
                reported = waited
            time.sleep(interval_s)
            continue
        if reported is not None:
            log(f"the master's rendezvous at {host}:{port} answers after {time.monotonic() - started:.0f} s")
        return True


def _describe(error: OSError) -> str:
    if isinstance(error, socket.gaierror):
        return f"its name does not resolve ({error.strerror})"
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "no answer"
    return error.strerror or str(error)
