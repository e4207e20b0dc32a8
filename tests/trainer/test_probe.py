"""`chargpt probe` over loopback: echo round trips, full-MTU datagrams, the interface choice, and a
real two-rank Gloo all-reduce."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from chargpt import probe
from conftest import child_env, free_port


@pytest.fixture
def echo_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ready, stop = threading.Event(), threading.Event()
    server = threading.Thread(target=probe.serve, args=(port, ready, stop), daemon=True)
    server.start()
    assert ready.wait(5)
    yield port
    stop.set()
    server.join(5)


def test_a_peer_with_an_echo_server_answers_at_full_mtu(echo_port):
    result = probe.probe_peers(["127.0.0.1"], echo_port, count=5)["peers"][0]
    assert result["error"] is None and result["lost"] == 0
    assert 0 < result["rtt_ms"] <= result["rtt_max_ms"] < 1000
    assert result["mtu"] == probe.interface_mtu("lo") and result["mtu_ok"] is True


def test_a_peer_without_an_echo_server_is_reported_lost():
    port = free_port()
    result = probe.probe_peers(["127.0.0.1"], port, count=2, settle_s=2)["peers"][0]
    assert result["lost"] == 2 and result["rtt_ms"] is None and result["mtu_ok"] is False
    assert f"no echo from 127.0.0.1 (127.0.0.1) port {port}/udp" == result["error"]


def test_a_peer_that_does_not_resolve_is_an_error_not_a_crash():
    started = time.monotonic()
    result = probe.probe_peer("chargpt-no-such-host.invalid", 9, count=1, deadline=started + 1)
    assert "does not resolve" in result["error"] and result["mtu_ok"] is False
    assert time.monotonic() - started >= 1, "it gave up before the peer's time to resolve was over"


def test_a_peer_that_answers_late_is_measured():
    """As a probe container that another host started a moment ago: its echo server comes up
    after the probe began, within the settle time."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ready, stop = threading.Event(), threading.Event()
    late = threading.Timer(2.0, probe.serve, args=(port, ready, stop))
    late.start()
    try:
        result = probe.probe_peers(["127.0.0.1"], port, count=5, settle_s=10)["peers"][0]
    finally:
        late.cancel()
        stop.set()
    assert ready.is_set(), "the echo server never started"
    assert (result["error"], result["lost"], result["mtu_ok"]) == (None, 0, True), result


def test_interface_check_compares_the_configured_interface_with_the_route():
    assert probe.probe_interface("127.0.0.1", "auto") | {"reason": ""} == {
        "master": "127.0.0.1", "routed": "lo", "reason": "", "configured": "auto", "used": "lo",
        "reaches_master": True, "mtu": probe.interface_mtu("lo")}
    wrong = probe.probe_interface("127.0.0.1", "eth9")
    assert (wrong["used"], wrong["reaches_master"]) == ("eth9", False)


def test_bus_bandwidth_counts_what_each_rank_sends():
    assert probe.bus_bandwidth_mb_s(4_000_000, 2, 0.01) == pytest.approx(400.0)
    assert probe.bus_bandwidth_mb_s(4_000_000, 4, 0.01) == pytest.approx(600.0)


def test_two_ranks_time_an_allreduce_over_gloo():
    port = free_port()
    command = [sys.executable, "-m", "chargpt.probe", "allreduce", "--bytes", "400000", "--iterations", "3",
               "--timeout", "60"]
    ranks = [subprocess.Popen(command, env=child_env(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                                                     MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    result = json.loads(outputs[0][0])
    assert result["world_size"] == 2 and result["bytes"] == 400000 and result["iterations"] == 3
    assert result["time_ms"] > 0 and result["bus_bandwidth_mb_s"] > 0
    assert outputs[1][0] == "", "only rank 0 prints the result"


def test_the_cli_prints_one_json_object(capsys):
    from chargpt.cli import main

    assert main(["probe", "interface", "--target", "127.0.0.1"]) == 0
    assert json.loads(capsys.readouterr().out)["routed"] == "lo"


def test_the_probe_module_runs_without_loading_torch():
    """Every host starts these at once in the deployment: without torch they start in hundredths of a
    second instead of about 1.5 s of CPU each."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "chargpt.probe", "interface", "--target",
                           "127.0.0.1"], env=child_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["routed"] == "lo"
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert "chargpt.network" in imported
    assert [name for name in imported if name.split(".")[0] == "torch"] == []
