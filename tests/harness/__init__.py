"""What the test suites share to drive Ansible: one inventory writer (`harness.inventory`), one
ansible-playbook runner (`harness.playbook`), and the roles' own defaults and derived layout
(`harness.roles`). Importable as `harness` from tests/e2e and tests/deploy: pytest puts tests/ on
sys.path for their packages, because tests/ itself is not a package."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# tiny-shakespeare in the shared folder beside the repository: the corpus the tests deploy with.
CORPUS = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"
