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


def test_check_config_prints_a_summary_of_every_example() -> None:
    """Each example proxy configuration passes ``yastack check-config`` and is summarised."""
    for path in sorted((ROOT / "examples" / "proxy").glob("*.yaml")):
        done = yastack("check-config", str(path))
        assert done.returncode == 0, (path, done.stderr)
        assert "listeners (" in done.stdout and "clusters (" in done.stdout, done.stdout


def test_check_config_names_every_problem_by_its_yaml_path(tmp_path: Path) -> None:
    """Unsupported and missing fields are errors with their YAML paths, all of them, exit 1."""
    config = tmp_path / "bad.yaml"
    config.write_text("static_resources:\n  listeners:\n  - name: x\n    bogus: 1\n")
    done = yastack("check-config", str(config))
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "static_resources.listeners[0].bogus: unsupported field 'bogus'" in done.stderr
    assert "static_resources.listeners[0].address: required field 'address' is missing" in done.stderr
    missing = yastack("check-config", str(tmp_path / "nothing.yaml"))
    assert missing.returncode == 1 and "No such file" in missing.stderr


def test_check_config_checks_certificate_files_when_asked(tmp_path: Path) -> None:
    """``--check-files``: the TLS example's certificates must exist (relative to the config);
    made with ``yastack certs``, they do."""
    example = (ROOT / "examples" / "proxy" / "tls_sni.yaml").read_text()
    config = tmp_path / "tls_sni.yaml"
    config.write_text(example)
    without = yastack("check-config", "--check-files", str(config))
    assert without.returncode == 1 and "certs/" in without.stderr
    assert yastack("certs", str(tmp_path / "certs"), "--hosts", "a.example,b.example").returncode == 0
    made = yastack("check-config", "--check-files", str(config))
    assert made.returncode == 0, made.stderr
