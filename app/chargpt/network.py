"""Which network interface reaches an address: the Gloo interface choice, with the standard library only
(the network probe uses it before any torch is loaded)."""

from __future__ import annotations

import array
import fcntl
import socket
import struct

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
