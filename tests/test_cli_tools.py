"""The ``yastack certs`` and ``yastack check-config`` commands, run as a user runs them."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def yastack(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trio_yastack", *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_certs_writes_a_ca_and_a_certificate_per_host_that_tls_accepts(tmp_path: Path) -> None:
    """``yastack certs DIR --hosts ...`` prints the files it wrote; the leaf chain loads into a
    server context and the CA into a client context that checks the host name; keys are 0600."""
    done = yastack("certs", str(tmp_path / "certs"), "--hosts", "a.example,198.18.0.2")
    assert done.returncode == 0, done.stderr
    written = [Path(line) for line in done.stdout.split()]
    names = sorted(path.name for path in written)
    assert names == sorted(
        ["ca.pem", "ca.key", "a.example.pem", "a.example.key", "198.18.0.2.pem", "198.18.0.2.key"]
    )
    for path in written:
        if path.suffix == ".key":
            assert path.stat().st_mode & 0o777 == 0o600, path
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp_path / "certs" / "a.example.pem", tmp_path / "certs" / "a.example.key")
    client = ssl.create_default_context(cafile=str(tmp_path / "certs" / "ca.pem"))
    assert client.check_hostname


def test_certs_refuses_to_overwrite_and_names_the_flag(tmp_path: Path) -> None:
    assert yastack("certs", str(tmp_path), "--hosts", "a.example").returncode == 0
    again = yastack("certs", str(tmp_path), "--hosts", "a.example")
    assert again.returncode == 1
    assert again.stderr.startswith("yastack certs: ") and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    assert yastack("certs", str(tmp_path), "--hosts", "a.example", "--overwrite").returncode == 0


def test_certs_rejects_a_bad_host_with_one_line(tmp_path: Path) -> None:
    done = yastack("certs", str(tmp_path / "x"), "--hosts", "not a host")
    assert done.returncode == 1 and "not a host" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()  # checked before anything is written
