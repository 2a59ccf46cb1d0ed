"""``pacs tls check``: the chain, the key and the name, verified as a TLS peer would."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support import pki


def pacs_tls(cert: Path, key: Path, ca: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pacs.cli", "tls", "check", "--cert", str(cert), "--key", str(key),
         "--ca", str(ca), *extra],
        capture_output=True, text=True, timeout=120,
    )


def problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line.removeprefix("problem: ") for line in result.stdout.splitlines()
            if line.startswith("problem: ")]


@pytest.fixture(scope="module")
def root() -> pki.Issued:
    return pki.make_ca("pacs test root")


@pytest.fixture(scope="module")
def intermediate(root: pki.Issued) -> pki.Issued:
    return pki.make_ca("pacs test intermediate", issuer=root, path_length=0)


@pytest.fixture
def ca_file(root: pki.Issued, tmp_path: Path) -> Path:
    return root.write_cert(tmp_path / "ca.pem")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_server_certificate_through_an_intermediate_passes_and_is_described(
    root: pki.Issued, intermediate: pki.Issued, ca_file: Path, tmp_path: Path, host: str
) -> None:
    server = pki.server_cert(intermediate, key_type="rsa2048")
    cert, key = server.write(tmp_path, "server", chain=(intermediate,))

    result = pacs_tls(cert, key, ca_file, "--host", host)

    assert result.returncode == 0, result.stdout + result.stderr
    assert problems(result) == []
    lines = result.stdout.splitlines()
    assert "subject:    CN=localhost" in lines
    assert "issuer:     CN=pacs test intermediate" in lines
    assert "names:      DNS:localhost, IP:127.0.0.1" in lines
    assert "key:        RSA 2048 bits" in lines
    assert any(line.startswith("not after:") and "(364 days left)" in line for line in lines)
    seen = lines[lines.index("what a peer will see:") + 1:]
    assert seen[0] == ("  0: CN=localhost (issued by CN=pacs test intermediate; RSA 2048 bits)")
    assert seen[1].startswith("  1: CN=pacs test intermediate (issued by CN=pacs test root; EC")
    assert seen[2] == "  trusted through: CN=pacs test root (from ca.pem)"
    assert lines[-1] == f"OK: chain verified to ca.pem, key matches, {host} is in the names"


def test_a_name_not_in_the_certificate_is_one_problem(
    root: pki.Issued, ca_file: Path, tmp_path: Path
) -> None:
    cert, key = pki.server_cert(root).write(tmp_path, "server")

    result = pacs_tls(cert, key, ca_file, "--host", "127.0.0.2")

    assert result.returncode == 1
    assert problems(result) == [
        "127.0.0.2 is not in the certificate's names (SANs: DNS:localhost, IP:127.0.0.1)"]


def test_a_certificate_from_another_ca_is_refused(ca_file: Path, tmp_path: Path) -> None:
    other = pki.make_ca("another CA")
    cert, key = pki.server_cert(other).write(tmp_path, "server")

    result = pacs_tls(cert, key, ca_file)

    assert result.returncode == 1
    [problem] = problems(result)
    assert problem.startswith("the certificate is not signed by a CA in ca.pem (issuer: "
                              "CN=another CA")


def test_a_ca_of_the_same_name_but_another_key_is_refused(
    root: pki.Issued, ca_file: Path, tmp_path: Path
) -> None:
    """The chain is verified by signature, not by names (the seed's lesson)."""
    impostor = pki.make_ca("pacs test root")
    cert, key = pki.server_cert(impostor).write(tmp_path, "server")

    result = pacs_tls(cert, key, ca_file)

    assert result.returncode == 1
    [problem] = problems(result)
    assert problem.startswith("the certificate is not signed by the CA in ca.pem")


def test_a_missing_intermediate_is_named(
    intermediate: pki.Issued, ca_file: Path, tmp_path: Path
) -> None:
    cert, key = pki.server_cert(intermediate).write(tmp_path, "server")  # no chain appended

    result = pacs_tls(cert, key, ca_file)

    assert result.returncode == 1
    [problem] = problems(result)
    assert "issuer: CN=pacs test intermediate" in problem
    assert "append it to the certificate file" in problem


def test_an_expired_certificate_and_a_wrong_key_are_two_lines(
    root: pki.Issued, ca_file: Path, tmp_path: Path
) -> None:
    start = datetime(2025, 12, 2, 12, 0, tzinfo=UTC)
    expired = pki.server_cert(root, not_before=start, days=30)
    cert = expired.write_cert(tmp_path / "server.pem")
    key = pki.Issued(expired.cert, pki.make_key()).write_key(tmp_path / "other.key")

    result = pacs_tls(cert, key, ca_file, "--host", "localhost")

    assert result.returncode == 1
    assert problems(result) == ["the certificate expired on 2026-01-01",
                                "the key does not match the certificate"]
    assert any(line.startswith("not after:") and "days left)" in line and "(-" in line
               for line in result.stdout.splitlines())


def test_an_issuer_that_is_not_a_ca_and_a_client_only_certificate_are_refused(
    root: pki.Issued, ca_file: Path, tmp_path: Path
) -> None:
    not_a_ca = pki.make_ca("not a CA", issuer=root, is_ca=False)
    leaf = pki.client_cert(not_a_ca)
    cert, key = leaf.write(tmp_path, "leaf", chain=(not_a_ca,))

    result = pacs_tls(cert, key, ca_file)

    assert result.returncode == 1
    assert problems(result) == [
        "CN=not a CA issued a certificate of the chain but is not a CA (basicConstraints "
        "CA:FALSE)",
        "CN=not a CA's keyUsage does not allow signing certificates (keyCertSign)",
        "the certificate's extendedKeyUsage does not allow serverAuth (it allows: clientAuth)",
    ]


def test_an_expired_intermediate_is_named(
    root: pki.Issued, ca_file: Path, tmp_path: Path
) -> None:
    old = pki.make_ca("old intermediate", issuer=root,
                      not_before=datetime.now(UTC) - timedelta(days=40), days=10)
    cert, key = pki.server_cert(old).write(tmp_path, "server", chain=(old,))

    result = pacs_tls(cert, key, ca_file)

    assert result.returncode == 1
    [problem] = problems(result)
    assert problem.startswith("the CA certificate CN=old intermediate expired on ")


def test_a_chain_out_of_order_is_refused_as_a_peer_would(
    root: pki.Issued, ca_file: Path, tmp_path: Path
) -> None:
    upper = pki.make_ca("upper intermediate", issuer=root)
    lower = pki.make_ca("lower intermediate", issuer=upper)
    cert, key = pki.server_cert(lower).write(tmp_path, "server", chain=(upper, lower))

    result = pacs_tls(cert, key, ca_file)

    assert result.returncode == 1
    assert problems(result) == ["the certificate file is not in order (the certificate first, "
                                "then each issuer); some peers refuse such a chain"]
    assert "  1: CN=upper intermediate (issued by CN=pacs test root; " in result.stdout


@pytest.mark.parametrize("which", ["--cert", "--key", "--ca"])
def test_an_unreadable_file_exits_2_with_one_line(
    root: pki.Issued, ca_file: Path, tmp_path: Path, which: str
) -> None:
    cert, key = pki.server_cert(root).write(tmp_path, "server")
    files = {"--cert": cert, "--key": key, "--ca": ca_file}
    files[which] = tmp_path / "garbage.pem"
    files[which].write_text("not a PEM file\n")

    result = pacs_tls(files["--cert"], files["--key"], files["--ca"])

    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pacs: error: ") and "garbage.pem: no " in lines[0]
    assert result.stdout == ""
