#!/usr/bin/env python3
"""Which of the given HOST:PORT endpoints this host reaches over TCP, all tried at once.

    tcp_ports_reached.py TIMEOUT_S HOST:PORT...

Prints one JSON object: {"checked": [...], "closed": [...]} (those no connection reached within the
timeout). The network probe runs it once on every host, so that checking every other host costs
one command per host rather than one per pair."""

from __future__ import annotations

import json
import socket
import sys
from concurrent.futures import ThreadPoolExecutor

MAX_AT_ONCE = 64


def reaches(endpoint: str, timeout_s: float) -> bool:
    host, port = endpoint.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except OSError:
        return False


def main(argv: list[str]) -> int:
    timeout_s, endpoints = float(argv[0]), argv[1:]
    with ThreadPoolExecutor(max_workers=max(1, min(MAX_AT_ONCE, len(endpoints)))) as pool:
        reached = list(pool.map(lambda endpoint: reaches(endpoint, timeout_s), endpoints))
    print(json.dumps({"checked": endpoints,
                      "closed": [endpoint for endpoint, ok in zip(endpoints, reached) if not ok]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
