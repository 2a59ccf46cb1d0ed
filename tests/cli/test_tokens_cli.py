"""``pacs token create|list|revoke`` run as a user runs them: the secret is printed once and
works against the index, the list never shows it, a revoked token stops working."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from pacs.services.auth import Principal, Role, TokenService
from storage.index import Index


def pacs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacs.cli", *args], capture_output=True,
                          text=True, timeout=300)


def test_create_list_revoke(tmp_path: Path, database_url: str) -> None:
    where = ("--data-dir", str(tmp_path / "data"), "--database-url", database_url)

    created = pacs("token", "create", "--name", "ohif", "--role", "viewer",
                   "--expires-days", "30", *where)
    assert created.returncode == 0, created.stderr
    (secret,) = re.findall(r"pacs_[0-9a-f]{12}_[A-Za-z0-9_-]{43}", created.stdout)
    assert "will not be shown again" in created.stdout
    admin = pacs("token", "create", "--name", "root", "--role", "admin", *where)
    assert admin.returncode == 0, admin.stderr

    index = Index(database_url)
    try:
        assert TokenService(index=index).authenticate(secret) == Principal.of("ohif", Role.VIEWER)

        listed = pacs("token", "list", *where)
        assert listed.returncode == 0, listed.stderr
        header, *lines = listed.stdout.splitlines()
        assert header.split() == ["NAME", "ROLE", "CREATED", "EXPIRES", "LAST", "USED",
                                  "REVOKED"]
        assert [line.split()[:2] for line in lines] == [["ohif", "viewer"], ["root", "admin"]]
        assert lines[1].split()[4] == "-"  # root: no expiry
        assert secret.rsplit("_", 1)[1] not in listed.stdout + listed.stderr

        revoked = pacs("token", "revoke", "ohif", *where)
        assert revoked.returncode == 0, revoked.stderr
        assert TokenService(index=index).authenticate(secret) is None
        assert pacs("token", "list", *where).stdout.splitlines()[1].rstrip().endswith(
            tuple("0123456789"))  # a revocation time in the last column

        unknown = pacs("token", "revoke", "nobody", *where)
        assert unknown.returncode == 1
        assert "no token named 'nobody'" in unknown.stderr
    finally:
        index.dispose()


def test_bad_role_or_taken_name_exits_2_with_one_line(tmp_path: Path) -> None:
    where = ("--data-dir", str(tmp_path / "data"))
    assert pacs("token", "create", "--name", "ws", "--role", "viewer", *where).returncode == 0

    for args, message in [
        (("--name", "ws2", "--role", "root"), "no role 'root'"),
        (("--name", "ws", "--role", "qa"), "exists already"),
        (("--name", "a b", "--role", "qa"), "token name"),
    ]:
        result = pacs("token", "create", *args, *where)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("pacs: error: ") and message in lines[0]
        assert "pacs_" not in result.stdout
