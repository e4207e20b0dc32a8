"""Read-only checks of a cluster that site.yml deployed and whose run finished.

Against the lab these run inside `pytest tests` (the fixtures bring the lab up and run site.yml
with trainer_wait). Against your own cluster, after
`ansible-playbook site.yml -i inventory/mine -e '{"trainer_wait": true}'`:

    pytest tests/e2e/test_cluster.py --inventory inventory/mine

They change nothing on the hosts except for the overlay check, which starts short-lived probe
containers (named chargpt-e2e-probe-*, removed afterwards), and the image check, which lists the
image's setuid files in a container without network that removes itself.
"""

from __future__ import annotations

import pytest

from .checks import ARTIFACT_CHECKS, CHECKS, check_id


@pytest.mark.parametrize("check", CHECKS, ids=check_id)
def test_cluster(cluster, check):
    check(cluster)


@pytest.mark.parametrize("check", ARTIFACT_CHECKS, ids=check_id)
def test_artifacts(cluster, artifacts_dir, check):
    check(cluster, artifacts_dir)
