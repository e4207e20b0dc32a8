"""The preflight play: every bad inventory, setting or corpus stops the run with one message that
names the problem and the fix, before any host changes (here: hosts that are this machine)."""

from __future__ import annotations

import json
import time

import pytest

from harness.playbook import PlaybookRun

from .helpers import CORPUS, local_inventory, output, run_playbook

TWO = (["node1"], ["node2"])


def preflight(tmp_path, master=TWO[0], workers=TWO[1], env=None, args=(), **kwargs) -> PlaybookRun:
    inventory = local_inventory(tmp_path / "hosts.yml", list(master), list(workers), **kwargs)
    return run_playbook("playbooks/preflight.yml", inventory, *args, env=env)


def assert_stopped(result: PlaybookRun, *fragments: str) -> None:
    text = output(result)
    assert result.returncode != 0, text
    for fragment in fragments:
        assert fragment in text, f"{fragment!r} not in output:\n{text[-3000:]}"
    # Nothing but the preflight play ran, and it changed nothing.
    assert text.count("PLAY [") == 1, text
    assert result.recap and not result.changed_hosts(), result.recap


def in_rounds(cases: list[tuple]) -> list[list[tuple]]:
    """Cases (setting, value, ...) grouped so that no setting is twice in a round: one preflight run
    sets every setting of a round wrong at once, and the check, which loops over the settings, must
    name each of them."""
    rounds: list[list[tuple]] = []
    for case in cases:
        free = next((round_ for round_ in rounds if case[0] not in [other[0] for other in round_]), None)
        if free is None:
            rounds.append(free := [])
        free.append(case)
    return rounds


def round_id(cases: list[tuple]) -> str:
    return "+".join(f"{case[0]}={case[1]}" for case in cases)



def test_a_good_inventory_passes(tmp_path):
    """Every setting here is accepted, in one run (each would pass alone as well): five hosts, so that
    the smoke preset's global batch of 12 splits unevenly (3, 3, 2, 2 and 2); numbers and booleans
    written as strings, which the argument specs convert; an explicit Gloo interface that exists;
    extra environment the trainer does not own; a corpus reached through a symlink; the firewall with
    addresses that fit; the host network with a device that every host has; node2's clock 1 s ahead of a control node whose time zone is 5.5 h ahead of
    UTC (both sides are seconds since the epoch; a POSIX TZ needs no time zone database)."""
    link = tmp_path / "input.txt"
    link.symlink_to(CORPUS)
    host_vars = {"node2": {"cluster_node_rank": "1", "cluster_nproc_per_node": "1", "trainer_wait": "no",
                           "trainer_torchrun_join_timeout_s": "600", "overlay_network_encrypted": "false",
                           "trainer_gloo_socket_ifname": "lo", "swarm_host_epoch": time.time() + 1}}
    group_vars = {"trainer_preset": "smoke", "trainer_corpus_path": str(link),
                  "trainer_environment": {"TRAIN_FAULT_CHECKPOINT_PAUSE": "100:30", "OMP_NUM_THREADS": 2},
                  "swarm_max_clock_skew_s": 30,
                  "swarm_firewall": True, "swarm_firewall_extra_sources": ["10.0.0.0/24"],
                  "cluster_network": "host", "trainer_devices": ["/dev/null"]}
    result = preflight(tmp_path, workers=["node2", "node3", "node4", "node5"], host_vars=host_vars,
                       group_vars=group_vars, env={"TZ": "IST-5:30"})
    assert result.returncode == 0, output(result)
    assert result.recap and not result.changed_hosts(), result.recap


def test_a_single_host_passes(tmp_path):
    result = preflight(tmp_path, workers=[])
    assert result.returncode == 0, output(result)


def test_two_masters(tmp_path):
    assert_stopped(preflight(tmp_path, master=["node1", "node2"], workers=["node3"]),
                   "The inventory group `master` holds 2 host(s)", "must hold exactly one")


def test_no_master(tmp_path):
    assert_stopped(preflight(tmp_path, master=[], workers=["node2"], managers=["node2"]),
                   "The inventory group `master` holds 0 host(s)")


def test_cluster_host_outside_master_and_workers(tmp_path):
    assert_stopped(preflight(tmp_path, cluster_only=["stray"]),
                   "must together hold every host of `cluster`", "stray")


def test_manager_outside_the_cluster(tmp_path):
    assert_stopped(preflight(tmp_path, managers=[]), "The group `managers`", "at least one host")


@pytest.mark.parametrize("ranks, shown", [
    ({"node2": 1, "node3": 1}, '"node2": 1, "node3": 1'),   # duplicated
    ({"node3": -1}, '"node3": -1'),                          # negative
    ({"node3": 5}, '"node3": 5'),                            # not contiguous
    ({"node1": 1, "node2": 0}, '"node1": 1, "node2": 0'),    # master not at 0
])
def test_bad_ranks(tmp_path, ranks, shown):
    host_vars = {name: {"cluster_node_rank": rank} for name, rank in ranks.items()}
    assert_stopped(preflight(tmp_path, workers=["node2", "node3"], host_vars=host_vars),
                   "The node ranks", shown, "must be 0..2, each once, with the master at 0")


def test_cluster_numbers_out_of_range(tmp_path):
    """Both in one run: the check loops over the cluster's numbers and names each that is wrong."""
    wrong = {"cluster_nproc_per_node": 0, "cluster_master_port": 70000}
    assert_stopped(preflight(tmp_path, host_vars={"node2": wrong}),
                   "cluster_nproc_per_node is 0 on node2; it must be an integer of at least 1",
                   "cluster_master_port is 70000 on node2; it must be an integer from 1 to 65535")


OUT_OF_RANGE = [
    ("trainer_overrides", "max_steps=5", "a mapping"),
    ("trainer_gpus", "some", 'an integer of at least 0, or "all"'),
    ("trainer_torchrun_max_restarts", -1, "an integer of at least 0"),
    ("trainer_torchrun_join_timeout_s", 0, "an integer of at least 1 (seconds)"),
    ("trainer_min_nodes", 3, "an integer from 1 to the number of hosts (2), or 0 for every host"),
    ("trainer_rejoin_wait_s", 0, "an integer of at least 1 (seconds)"),
    ("trainer_supervisor_restart_sec", 0, "an integer of at least 1 (seconds)"),
    ("trainer_supervisor_start_limit_burst", 0, "an integer of at least 1"),
    ("trainer_lost_network_stop_timeout_s", -1, "an integer of at least 0 (seconds)"),
    ("trainer_cpuset", "0-3; reboot", 'CPU numbers and ranges such as "0-3"'),
    ("trainer_cpus", "two", 'a number of CPUs above 0 such as "2"'),
    ("trainer_cpus", "0", 'a number of CPUs above 0 such as "2"'),
    ("trainer_tmp_size", "lots", 'a size such as "512m"'),
    ("trainer_memory_limit", "8 gigs", 'a size such as "8g"'),
    ("trainer_cpu_shares", 1, "an integer from 2 to 262144, or 0 for the engine's default"),
    ("trainer_devices", ["/etc/passwd"], "a list of device paths under /dev, such as [/dev/infiniband]"),
]


@pytest.mark.parametrize("cases", in_rounds(OUT_OF_RANGE), ids=round_id)
def test_values_out_of_range(tmp_path, cases):
    assert_stopped(preflight(tmp_path, host_vars={"node2": {name: value for name, value, _ in cases}}),
                   *[f"{name} is {json.dumps(value)} on node2; it must be {expected}" for name, value, expected in cases])


@pytest.mark.parametrize("name, value, kind", [
    ("trainer_wait", "maybe", "bool"),
    ("cluster_node_rank", "one", "int"),
    ("cluster_nproc_per_node", "two", "int"),
    ("trainer_torchrun_join_timeout_s", "600s", "int"),
    ("trainer_environment", ["OMP_NUM_THREADS=2"], "dict"),
    ("overlay_network_encrypted", "maybe", "bool"),
])
def test_wrong_types_are_refused_by_the_argument_specs(tmp_path, name, value, kind):
    assert_stopped(preflight(tmp_path, host_vars={"node2": {name: value}}),
                   "Validation of arguments failed", f"argument '{name}' is of type",
                   f"unable to convert to {kind}")


def test_settings_under_their_old_names_are_refused(tmp_path):
    renamed = {"trainer_node_rank": "set cluster_node_rank instead",
               "trainer_nproc_per_node": "set cluster_nproc_per_node instead",
               "overlay_network_name": "set cluster_overlay_network instead",
               "trainer_restart_max_retries": "the trainer's supervisor unit restarts it",
               # Moved with the trainer role's jobs into roles of their own.
               "trainer_base_image": "set trainer_image_base instead",
               "trainer_registry_port": "set image_registry_port instead",
               "trainer_probe_max_rtt_ms": "set network_probe_max_rtt_ms instead",
               # Settings that the swarm's firewall and the probe read too: the cluster role's.
               "trainer_network": "set cluster_network instead (overlay or host)",
               "trainer_master_port": "set cluster_master_port instead"}
    assert_stopped(preflight(tmp_path, host_vars={"node2": dict.fromkeys(renamed, 1)}),
                   *[f"{old} is no setting any more: {new}" for old, new in renamed.items()])



def test_a_network_that_is_neither_overlay_nor_host(tmp_path):
    assert_stopped(preflight(tmp_path, group_vars={"cluster_network": "bridge"}),
                   "cluster_network", "overlay, host", "bridge")


def test_a_device_a_host_does_not_have(tmp_path):
    assert_stopped(preflight(tmp_path, group_vars={"cluster_network": "host", "trainer_devices": ["/dev/infiniband-none"]}),
                   "trainer_devices lists /dev/infiniband-none, which node1 does not have",
                   "Install the device's driver on that host, or remove it from trainer_devices")


def test_encrypted_overlay_without_kernel_support(tmp_path):
    # A module no kernel has stands for a kernel without IPsec (this machine's kernel has none either).
    settings = {"overlay_network_encrypted": True, "overlay_network_ipsec_modules": ["chargpt_no_such_module"]}
    assert_stopped(preflight(tmp_path, group_vars=settings),
                   "lacks the IPsec support an encrypted overlay needs", "missing: chargpt_no_such_module",
                   "set overlay_network_encrypted: false")


def test_bad_trainer_environment(tmp_path):
    environment = {"1BAD": "x", "NODE_RANK": 3, "OMP_NUM_THREADS": [2], "CHARGPT_MAX_STEPS": 10}
    assert_stopped(preflight(tmp_path, group_vars={"trainer_environment": environment}),
                   "trainer_environment on node1 is wrong", '["1BAD"] are not variable names',
                   '["NODE_RANK"] are set by the role itself', 'the values of ["OMP_NUM_THREADS"] are not strings or numbers',
                   '["CHARGPT_MAX_STEPS"] are trainer config keys (set them in trainer_overrides',
                   "fix these entries in the inventory")


@pytest.mark.parametrize("overrides, shown", [
    ({"max-steps": 10}, '["max-steps"] are not config keys'),
    ({"MAX_STEPS": 10}, '["MAX_STEPS"] are not config keys'),
    ({"lr": [0.1]}, 'the values of ["lr"] are not strings, numbers or booleans'),
])
def test_bad_trainer_overrides(tmp_path, overrides, shown):
    assert_stopped(preflight(tmp_path, group_vars={"trainer_overrides": overrides}),
                   "trainer_overrides on node1 is wrong", shown, "CHARGPT_<KEY>")



def test_processes_per_node_differ(tmp_path):
    assert_stopped(preflight(tmp_path, host_vars={"node2": {"cluster_nproc_per_node": 2}}),
                   "cluster_nproc_per_node differs between hosts")


def test_interface_that_does_not_exist(tmp_path):
    assert_stopped(preflight(tmp_path, host_vars={"node2": {"trainer_gloo_socket_ifname": "nosuch0"}}),
                   'trainer_gloo_socket_ifname is "nosuch0", but node2 has no such interface', "or to auto")



# The corpus and the trainer's settings are judged by the trainer's own code (`chargpt check`): the
# messages are the trainer's.
def test_missing_corpus(tmp_path):
    missing = tmp_path / "nothing.txt"
    assert_stopped(preflight(tmp_path, group_vars={"trainer_corpus_path": str(missing)}),
                   f"chargpt: error: corpus {missing} does not exist or is not a file")


def test_empty_corpus(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert_stopped(preflight(tmp_path, group_vars={"trainer_corpus_path": str(empty)}),
                   f"chargpt: error: corpus {empty} is empty")


def test_corpus_too_short_for_the_context(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be.\n" * 10)
    assert_stopped(preflight(tmp_path, group_vars={"trainer_corpus_path": str(short)}),
                   f"corpus {short} is too short: its validation split has 21 characters but block_size=64")


def test_block_size_too_long_for_the_corpus(tmp_path):
    assert_stopped(preflight(tmp_path, group_vars={"trainer_overrides": {"block_size": 200_000}}),
                   "too short: its validation split has", "block_size=200000")


def test_corpus_not_text(tmp_path):
    binary = tmp_path / "corpus.bin"
    binary.write_bytes(CORPUS.read_bytes()[:8192] + bytes(range(128, 256)) * 40)
    assert_stopped(preflight(tmp_path, group_vars={"trainer_corpus_path": str(binary)}),
                   f"chargpt: error: corpus {binary} is not UTF-8 text")


def test_utf16_corpus(tmp_path):
    utf16 = tmp_path / "utf16.txt"
    utf16.write_bytes(CORPUS.read_text()[:20_000].encode("utf-16"))
    assert_stopped(preflight(tmp_path, group_vars={"trainer_corpus_path": str(utf16)}),
                   f"chargpt: error: corpus {utf16} ", "not UTF-8 text")



def test_corpus_is_a_folder(tmp_path):
    assert_stopped(preflight(tmp_path, group_vars={"trainer_corpus_path": str(tmp_path)}),
                   "does not exist or is not a file")


@pytest.mark.parametrize("overrides, shown", [
    ({"max_step": 10}, "unknown config key 'max_step'"),
    ({"max_steps": "ten"}, "bad value 'ten' for max_steps"),
    ({"lr": "nan"}, "lr=nan is not a finite number"),
    ({"lr": "inf"}, "lr=inf is not a finite number"),
    ({"dropout": 1.5}, "dropout=1.5 must be in [0, 1)"),
    ({"allow_config_change": "max_steps"}, "allow_config_change is set with trainer_allow_config_change"),
])
def test_overrides_the_trainer_refuses(tmp_path, overrides, shown):
    assert_stopped(preflight(tmp_path, group_vars={"trainer_overrides": overrides}), shown)


@pytest.mark.parametrize("settings, shown", [
    # The original preset's batch of 64 at once on each of two processes per host: about 12 GiB.
    ({"trainer_preset": "original", "cluster_nproc_per_node": 2},
     ["(2 processes of ", "more than the memory limit of 8.00 GiB (8g): set micro_batch_size=",
      "or run fewer processes per host"]),
    # A model whose weights and optimizer alone outgrow the limit.
    ({"trainer_memory_limit": "1g", "trainer_overrides": {"n_layer": 24, "n_embd": 1024, "n_head": 8}},
     ["more than the memory limit of 1.00 GiB (1g): make the model smaller (n_layer=24, n_embd=1024"]),
])
def test_a_run_that_cannot_fit_in_memory(tmp_path, settings, shown):
    """Refused before any host changes, by the trainer's estimate (chargpt check --memory-limit)."""
    assert_stopped(preflight(tmp_path, workers=[], group_vars=settings),
                   "chargpt: error: this run needs about ", *shown)


def test_a_run_larger_than_the_hosts_memory(tmp_path):
    """Within a memory limit set above what the host has, the host's own memory refuses it."""
    giant = {"trainer_memory_limit": "64t", "trainer_overrides": {"n_layer": 48, "n_embd": 8192, "n_head": 64}}
    assert_stopped(preflight(tmp_path, workers=[], group_vars=giant), "GiB of memory, but this run needs about ",
                   "GiB on each host (1 training process(es) and torchrun's agent, as chargpt check estimates them)")


def test_an_unknown_preset(tmp_path):
    assert_stopped(preflight(tmp_path, group_vars={"trainer_preset": "giant"}), "unknown preset 'giant'")



def test_a_world_size_larger_than_the_batch(tmp_path):
    # A global batch of 4 leaves the fifth host no sequence.
    assert_stopped(preflight(tmp_path, workers=["node2", "node3", "node4", "node5"],
                             group_vars={"trainer_preset": "smoke", "trainer_overrides": {"batch_size": 4}}),
                   "batch_size=4 is smaller than the world size 5; set batch_size to at least 5")


def test_an_allowed_change_of_a_shape_key(tmp_path):
    assert_stopped(preflight(tmp_path, group_vars={"trainer_allow_config_change": ["n_embd"]}),
                   "allow_config_change names n_embd, which set the model's shape")


# The cluster's names are judged by validate_inventory, before the trainer's.
UNSAFE_CLUSTER_NAMES = [
    ("cluster_name", "Chargpt Prod", 'cluster_name is "Chargpt Prod"'),
    ("cluster_name", "$(reboot)", 'cluster_name is "$(reboot)"'),
    ("cluster_name", "a%n", 'cluster_name is "a%n"'),
    ("cluster_overlay_network", "net work", 'cluster_overlay_network is "net work"'),
    ("cluster_overlay_network", "-net", 'cluster_overlay_network is "-net"'),
    ("cluster_supervisor_unit", "x.service; rm -rf /", 'cluster_supervisor_unit is "x.service; rm -rf /"'),
    ("cluster_overlay_anchor", "anchor;reboot", 'cluster_overlay_anchor is "anchor;reboot"'),
    ("cluster_runs_dir", "/srv/../etc", 'cluster_runs_dir is "/srv/../etc"'),
    ("cluster_base_dir", "srv/chargpt", 'cluster_base_dir is "srv/chargpt"'),
]
UNSAFE_TRAINER_NAMES = [
    ("trainer_run_id", "../escape", 'trainer_run_id is "../escape"'),
    ("trainer_run_id", "a b", 'trainer_run_id is "a b"'),
    ("trainer_run_id", "x;reboot", 'trainer_run_id is "x;reboot"'),
    ("trainer_supervisor_docker_unit", "docker", 'trainer_supervisor_docker_unit is "docker"'),
    ("trainer_supervisor_docker_cli", "docker", 'trainer_supervisor_docker_cli is "docker"'),
    ("trainer_supervisor_script", "/usr/local/bin/x y", 'trainer_supervisor_script is "/usr/local/bin/x y"'),
]


# The network probe's, after the trainer's.
UNSAFE_PROBE_NAMES = [
    ("network_probe_container", "probe $HOME", 'network_probe_container is "probe $HOME"'),
    ("network_probe_alias_prefix", "probe-;", 'network_probe_alias_prefix is "probe-;"'),
]


@pytest.mark.parametrize("cases", in_rounds(UNSAFE_CLUSTER_NAMES) + in_rounds(UNSAFE_TRAINER_NAMES)
                         + in_rounds(UNSAFE_PROBE_NAMES), ids=round_id)
def test_unsafe_names(tmp_path, cases):
    result = preflight(tmp_path, group_vars={name: value for name, value, _ in cases})
    assert_stopped(result, *[shown for _, _, shown in cases])
    assert result.text.count("Pick another") >= len(cases), result.failure_messages()


def test_a_host_clock_off_the_control_nodes_stops(tmp_path):
    # swarm_host_epoch stands in for node2's clock: 100 s behind the control node.
    result = preflight(tmp_path, host_vars={"node2": {"swarm_host_epoch": time.time() - 100}})
    assert_stopped(result, "The clock of node2 is -1", "s off the control node's (at most 5 s allowed",
                   "docker_install_time_service: true")
    assert "The clock of node1" not in output(result)




FIREWALL_SETTINGS = [
    ("swarm_firewall_extra_sources", ["10.0.0.0/24", "10.1.0.1 }; flush ruleset"],
     'swarm_firewall_extra_sources is ["10.0.0.0/24", "10.1.0.1 }; flush ruleset"] on node1'),
    ("swarm_advertise_addr", "eth1", 'swarm_advertise_addr is "eth1" on node1; it must be an IPv4 address'),
    ("swarm_firewall_unit", "fw.service; reboot", 'swarm_firewall_unit is "fw.service; reboot"'),
]


def test_firewall_settings(tmp_path):
    """One run with every bad firewall setting: the check names each of them."""
    assert_stopped(preflight(tmp_path, group_vars={"swarm_firewall": True,
                                                   **{name: value for name, value, _ in FIREWALL_SETTINGS}}),
                   *[shown for _, _, shown in FIREWALL_SETTINGS], "or set swarm_firewall: false")


def test_firewall_with_a_host_left_out_of_the_run_and_no_address_for_it(tmp_path):
    # node3 is outside the run: no facts give its default address, and the inventory gives none.
    result = preflight(tmp_path, workers=["node2", "node3"], group_vars={"swarm_firewall": True},
                       args=("--limit", "node1,node2"))
    assert_stopped(result, "No swarm address is known for node3 (outside this run (--limit), so without facts, "
                   "and swarm_firewall or the host network needs it). Set swarm_advertise_addr, or an IPv4 "
                   "ansible_host, for it in the inventory, or run without --limit.")


def test_firewall_with_a_host_left_out_of_the_run_and_its_address_in_the_inventory(tmp_path):
    # A local connection never uses ansible_host: here it only gives node3's swarm address.
    result = preflight(tmp_path, workers=["node2", "node3"], group_vars={"swarm_firewall": True},
                       host_vars={"node3": {"ansible_host": "198.51.100.13"}}, args=("--limit", "node1,node2"))
    assert result.returncode == 0, output(result)


def test_no_firewall_needs_no_address_of_the_hosts_left_out(tmp_path):
    result = preflight(tmp_path, workers=["node2", "node3"], args=("--limit", "node1,node2"))
    assert result.returncode == 0, output(result)


def test_registry_without_tag(tmp_path):
    assert_stopped(preflight(tmp_path, group_vars={"trainer_image_tag": ""}),
                   "trainer_image_distribution is external", "trainer_image_tag ('') is empty")


def test_unknown_image_distribution(tmp_path):
    assert_stopped(preflight(tmp_path, group_vars={"trainer_image_distribution": "torrent"}),
                   "trainer_image_distribution is 'torrent'", "cluster_registry", "copy", "external")


@pytest.mark.parametrize("host, advice", [
    ("node3", "node3 (a worker) could not be reached. Bring it back (its power, network and SSH) and run site.yml "
              "again, or, to go on without it, remove it from the inventory and run site.yml again: the hosts left "
              "train on from the newest checkpoint they hold, at the smaller world size"),
    ("node1", "node1 (the master) could not be reached. Bring it back (its power, network and SSH) and run site.yml "
              "again, or, if it is lost for good, remove it from the inventory, put another host under master and "
              "first under managers, and run site.yml again: the hosts left train on"),
])
def test_unreachable_host_stops_site_yml_with_what_to_do(tmp_path, host, advice):
    # An SSH host on a closed loopback port: unreachable at once. In check mode, so that a stage that
    # wrongly ran after the preflight would not change this machine either.
    host_vars = {host: {"ansible_connection": "ssh", "ansible_host": "127.0.0.1", "ansible_port": 9,
                        "ansible_ssh_common_args": "-o ConnectTimeout=3 -o BatchMode=yes"}}
    inventory = local_inventory(tmp_path / "hosts.yml", ["node1"], ["node2", "node3"], host_vars=host_vars)
    result = run_playbook("site.yml", inventory, "--check")
    text = output(result)
    assert result.returncode != 0, text
    assert f"fatal: [{host}]: UNREACHABLE" in text, text[-3000:]
    stages = text.split("PLAY RECAP")[0].split("PLAY [")[2:]
    assert stages and not any("TASK [" in stage for stage in stages), f"a stage after the preflight ran:\n{text}"
    assert advice in text, text[-3000:]
