"""Options shared by the test folders (registered here so that `pytest tests` knows them)."""


def pytest_addoption(parser):
    group = parser.getgroup("chargpt cluster checks (tests/e2e)")
    group.addoption(
        "--inventory", default=None, metavar="PATH",
        help="check this already deployed cluster (an Ansible inventory file or folder) with the "
             "read-only checks of tests/e2e/test_cluster.py instead of bringing up a lab; the "
             "lab-driving scenarios are then skipped")
    group.addoption(
        "--artifacts-dir", default="artifacts", metavar="PATH",
        help="where site.yml fetched the run's artifacts on this machine (default: artifacts)")
