"""`chargpt probe` over loopback: echo round trips, full-MTU datagrams, the interface choice, and a
real two-rank Gloo all-reduce. The processes run the command lines the deployment runs
(roles/network_probe/tasks/), which a test reads to keep the two alike."""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import threading
import time

import pytest
import yaml

from chargpt import probe
from conftest import REPO_ROOT, chargpt_command, child_env, free_port

PROBE_TASKS = sorted((REPO_ROOT / "roles" / "network_probe" / "tasks").glob("*.yml"))
# `chargpt probe allreduce` as the role runs it: these options, and the environment below.
ALLREDUCE_OPTIONS = {"--bytes": "400000", "--iterations": "3", "--timeout": "60"}


def allreduce_environment(rank: int, port: int) -> dict[str, str]:
    """What the role sets for `chargpt probe allreduce`, for one of two ranks over loopback."""
    return {"RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
            "GLOO_SOCKET_IFNAME": "lo"}


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def echo_port():
    port = free_udp_port()
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
    port = free_udp_port()
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
    command = chargpt_command("probe", "allreduce", *[word for option in ALLREDUCE_OPTIONS.items() for word in option])
    ranks = [subprocess.Popen(command, env=child_env(**allreduce_environment(rank, port)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [rank.communicate(timeout=120) for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    assert outputs[0][0].count("\n") == 1, f"rank 0 prints one line of JSON: {outputs[0]}"
    result = json.loads(outputs[0][0])
    assert result["world_size"] == 2 and result["bytes"] == 400000 and result["iterations"] == 3
    assert result["time_ms"] > 0 and result["bus_bandwidth_mb_s"] > 0
    assert outputs[1][0] == "", "only rank 0 prints the result"


def test_the_cli_prints_one_json_object(capsys):
    from chargpt.cli import main

    assert main(["probe", "interface", "--target", "127.0.0.1"]) == 0
    assert json.loads(capsys.readouterr().out)["routed"] == "lo"


def test_the_deployed_echo_server_answers_the_deployed_peers_probe():
    port = free_udp_port()
    server = subprocess.Popen(chargpt_command("probe", "serve", "--port", str(port)), env=child_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        done = subprocess.run(chargpt_command("probe", "peers", "--port", str(port), "--count", "3", "127.0.0.1"),
                              env=child_env(), capture_output=True, text=True, timeout=120)
    finally:
        server.terminate()
        server_output = server.communicate(timeout=30)[0]
    assert done.returncode == 0, done.stderr
    peers = json.loads(done.stdout)["peers"]
    assert [(peer["peer"], peer["error"], peer["lost"], peer["mtu_ok"]) for peer in peers] == [
        ("127.0.0.1", None, 0, True)], f"{peers}\nthe echo server said: {server_output[-3000:]}"


def cli_probe_commands() -> set[str]:
    parser = argparse.ArgumentParser()
    probe.add_commands(parser)
    return {name for action in parser._actions if isinstance(action, argparse._SubParsersAction)
            for name in action.choices}


def words(command) -> list[str]:
    """A command line as the role writes it: a YAML list, or a Jinja expression that builds one."""
    if isinstance(command, list):
        return [str(word) for word in command]
    return re.findall(r"'([^']*)'", command) if "{{" in command else command.split()


def chargpt_command_lines(node) -> list[list[str]]:
    """Every exec's argv, and every container's entrypoint and command, that names chargpt."""
    if isinstance(node, list):
        return [line for item in node for line in chargpt_command_lines(item)]
    if not isinstance(node, dict):
        return []
    line = [word for key in ("entrypoint", "command", "argv") for word in words(node.get(key, []))]
    found = [line] if any("chargpt" in word for word in line) else []
    return found + chargpt_command_lines(list(node.values()))


def test_the_role_runs_every_probe_command_through_the_cli():
    known = cli_probe_commands()
    used = set()
    for line in chargpt_command_lines([yaml.safe_load(path.read_text()) for path in PROBE_TASKS]):
        start = line.index("python") if "python" in line else 0
        program, arguments = line[start:start + 4], line[start + 4:]
        assert program == ["python", "-m", "chargpt", "probe"] and arguments and arguments[0] in known, line
        used.add(arguments[0])
        if arguments[0] == "allreduce":
            assert line[0] == "env" and [word.split("=")[0] for word in line[1:start]] == list(
                allreduce_environment(0, 0)), line
            assert arguments[1::2] == list(ALLREDUCE_OPTIONS), line
    assert used == known, "a probe command the role does not run"
