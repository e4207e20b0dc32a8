"""The network probe's TCP check (roles/trainer/files/tcp_ports_reached.py): one run tries every
endpoint at once and names those it could not reach."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time

from .helpers import REPO

SCRIPT = REPO / "roles" / "trainer" / "files" / "tcp_ports_reached.py"
TIMEOUT_S = 2


def listener(backlog: int) -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock


def endpoint(sock: socket.socket) -> str:
    return "127.0.0.1:%d" % sock.getsockname()[1]


@contextlib.contextmanager
def silent_endpoints(count: int):
    """Listeners whose full accept queue drops new connections' SYNs: a connect hangs until its
    timeout, as towards a firewall that drops."""
    with contextlib.ExitStack() as stack:
        found = []
        for _ in range(count):
            sock = stack.enter_context(listener(0))
            for _ in range(2):  # the first fills the queue, the second's SYN is dropped
                client = stack.enter_context(socket.socket())
                client.settimeout(0.3)
                with contextlib.suppress(OSError):
                    client.connect(sock.getsockname())
            found.append(endpoint(sock))
        yield found


def test_names_the_closed_ports_and_tries_them_at_once():
    with listener(8) as open_port, silent_endpoints(3) as silent:
        reached = endpoint(open_port)
        with listener(8) as closing:
            refused = endpoint(closing)  # nothing listens there once it is closed
        started = time.monotonic()
        done = subprocess.run([sys.executable, str(SCRIPT), str(TIMEOUT_S), reached, refused, *silent],
                              capture_output=True, text=True, timeout=60)
        elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["checked"] == [reached, refused, *silent]
    assert result["closed"] == [refused, *silent]
    # One by one, the silent ones alone would take 3 x TIMEOUT_S.
    assert TIMEOUT_S <= elapsed < 2 * TIMEOUT_S, f"{elapsed:.1f} s: the endpoints were not tried at once"


def test_nothing_to_check():
    done = subprocess.run([sys.executable, str(SCRIPT), "5"], capture_output=True, text=True, timeout=60)
    assert json.loads(done.stdout) == {"checked": [], "closed": []}
