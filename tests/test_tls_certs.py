"""Development certificates (``trio_yastack.tls.certs``): parsed back, verified, and used in TLS.

Three independent oracles judge the certificates: the extensions read back with ``cryptography``;
the CA/Browser-Forum path builder in ``cryptography.x509.verification`` (the webpki profile, far
stricter than "the signature checks out"); and OpenSSL itself, through a real TLS handshake between
two ``ssl`` objects joined by memory BIOs, with no network at all.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    DNSName,
    IPAddress,
    PolicyBuilder,
    ServerVerifier,
    Store,
    Subject,
    VerificationError,
)

from trio_yastack.tls.certs import (
    CertificateAuthority,
    LeafCertificate,
    load_ca,
    main_certs,
    make_ca,
    normalize_host,
)

NOW = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return make_ca(now=NOW)


@pytest.fixture(scope="module")
def leaf(ca: CertificateAuthority) -> LeafCertificate:
    return ca.issue(["a.example", "b.example", "198.18.0.2", "2001:db8::2"], now=NOW)


def ext(certificate: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension:
    return certificate.extensions.get_extension_for_class(kind)


def server_verifier(
    ca: CertificateAuthority, subject: Subject, when: datetime.datetime = NOW
) -> ServerVerifier:
    """The CA/Browser-Forum verifier for ``subject``, trusting only ``ca``, at time ``when``."""
    return PolicyBuilder().store(Store([ca.certificate])).time(when).build_server_verifier(subject)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the CA -------------------------------------------------------------------------------------


def test_ca_is_a_self_signed_ca_that_signs_only_leaves(ca: CertificateAuthority) -> None:
    certificate = x509.load_pem_x509_certificate(ca.cert_pem)
    assert certificate.subject == certificate.issuer
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == (
        "trio_yastack development CA"
    )
    certificate.verify_directly_issued_by(certificate)
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(certificate.public_key().curve, ec.SECP256R1)

    constraints = ext(certificate, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca and constraints.value.path_length == 0
    usage = ext(certificate, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign and not usage.value.digital_signature
    assert ext(certificate, x509.SubjectKeyIdentifier).value == (
        x509.SubjectKeyIdentifier.from_public_key(certificate.public_key())
    )
    assert certificate.not_valid_before_utc == NOW - datetime.timedelta(minutes=1)
    assert certificate.not_valid_after_utc == NOW + datetime.timedelta(days=30)


def test_key_pem_is_unencrypted_pkcs8(ca: CertificateAuthority, leaf: LeafCertificate) -> None:
    for holder in (ca, leaf):
        assert holder.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, not "EC PRIVATE KEY"
        key = serialization.load_pem_private_key(holder.key_pem, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert key.public_key() == holder.certificate.public_key()


# --- the leaf -----------------------------------------------------------------------------------


def test_leaf_has_the_web_pki_server_profile(ca: CertificateAuthority, leaf: LeafCertificate) -> None:
    certificate = x509.load_pem_x509_certificate(leaf.cert_pem)
    certificate.verify_directly_issued_by(ca.certificate)
    assert certificate.issuer == ca.certificate.subject
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "a.example"
    assert isinstance(certificate.public_key().curve, ec.SECP256R1)

    san = ext(certificate, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["a.example", "b.example"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("198.18.0.2"),
        ipaddress.ip_address("2001:db8::2"),
    ]
    assert leaf.hosts == ["a.example", "b.example", "198.18.0.2", "2001:db8::2"]

    constraints = ext(certificate, x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = ext(certificate, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature and usage.value.key_agreement
    assert not (usage.value.key_encipherment or usage.value.key_cert_sign or usage.value.crl_sign)
    assert list(ext(certificate, x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    ]
    ca_ski = ext(ca.certificate, x509.SubjectKeyIdentifier).value.digest
    assert ext(certificate, x509.AuthorityKeyIdentifier).value.key_identifier == ca_ski

    assert certificate.not_valid_before_utc == NOW - datetime.timedelta(minutes=1)
    assert certificate.not_valid_after_utc == NOW + datetime.timedelta(days=30)
    assert 0 < certificate.serial_number < 2**159


def test_serials_and_keys_are_fresh_per_leaf(ca: CertificateAuthority) -> None:
    first, second = ca.issue(["a.example"], now=NOW), ca.issue(["a.example"], now=NOW)
    assert first.certificate.serial_number != second.certificate.serial_number
    assert first.certificate.public_key() != second.certificate.public_key()


def test_chain_pem_is_leaf_then_ca(ca: CertificateAuthority, leaf: LeafCertificate) -> None:
    assert x509.load_pem_x509_certificates(leaf.chain_pem) == [leaf.certificate, ca.certificate]


@pytest.mark.parametrize(
    "subject",
    [
        DNSName("a.example"),
        DNSName("B.EXAMPLE"),
        IPAddress(ipaddress.ip_address("198.18.0.2")),
        IPAddress(ipaddress.ip_address("2001:db8::2")),
    ],
    ids=["first-dns", "second-dns-any-case", "ipv4", "ipv6"],
)
def test_leaf_verifies_against_the_ca(
    ca: CertificateAuthority, leaf: LeafCertificate, subject: Subject
) -> None:
    chain = server_verifier(ca, subject).verify(leaf.certificate, [])
    assert chain == [leaf.certificate, ca.certificate]


@pytest.mark.parametrize(
    "subject",
    [DNSName("c.example"), DNSName("x.a.example"), IPAddress(ipaddress.ip_address("198.18.0.3"))],
    ids=["other-name", "subdomain", "other-ip"],
)
def test_leaf_does_not_verify_for_other_names(
    ca: CertificateAuthority, leaf: LeafCertificate, subject: Subject
) -> None:
    with pytest.raises(VerificationError):
        server_verifier(ca, subject).verify(leaf.certificate, [])


def test_leaf_does_not_verify_under_another_ca(leaf: LeafCertificate) -> None:
    with pytest.raises(VerificationError):
        server_verifier(make_ca(now=NOW), DNSName("a.example")).verify(leaf.certificate, [])


def test_leaf_does_not_verify_after_it_expires(ca: CertificateAuthority, leaf: LeafCertificate) -> None:
    with pytest.raises(VerificationError):
        server_verifier(ca, DNSName("a.example"), NOW + datetime.timedelta(days=31)).verify(
            leaf.certificate, []
        )


def test_leaf_verifies_as_a_client_certificate(ca: CertificateAuthority, leaf: LeafCertificate) -> None:
    verifier = PolicyBuilder().store(Store([ca.certificate])).time(NOW).build_client_verifier()
    verified = verifier.verify(leaf.certificate, [])
    assert verified.chain == [leaf.certificate, ca.certificate]


def test_wildcard_covers_one_label(ca: CertificateAuthority) -> None:
    wildcard = ca.issue(["*.a.example"], now=NOW)
    server_verifier(ca, DNSName("x.a.example")).verify(wildcard.certificate, [])
    for other in ("a.example", "y.x.a.example"):
        with pytest.raises(VerificationError):
            server_verifier(ca, DNSName(other)).verify(wildcard.certificate, [])
    assert wildcard.paths("d") == (Path("d/_wildcard.a.example.pem"), Path("d/_wildcard.a.example.key"))


def test_leaf_never_outlives_its_ca() -> None:
    short = make_ca(days=2, now=NOW)
    leaf = short.issue(["a.example"], days=90, now=NOW)
    assert leaf.certificate.not_valid_after_utc == short.certificate.not_valid_after_utc
    with pytest.raises(ValueError, match="CA expired"):
        short.issue(["a.example"], now=NOW + datetime.timedelta(days=3))


# --- host names ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "normal"),
    [
        ("a.example", "a.example"),
        ("A.Example", "a.example"),
        ("localhost", "localhost"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("1st.example", "1st.example"),
        ("*.a.example", "*.a.example"),
        ("198.18.0.2", "198.18.0.2"),
        ("2001:DB8:0:0::2", "2001:db8::2"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
    ],
)
def test_valid_hosts_are_normalized(host: str, normal: str) -> None:
    assert normalize_host(host) == normal


@pytest.mark.parametrize(
    "host",
    [
        "",
        " ",
        "a example",
        " a.example",
        "a.example.",
        ".a.example",
        "a..example",
        "*",
        "*.example",
        "a.*.example",
        "*a.example",
        "a*.example",
        "*.*.example",
        "-a.example",
        "a-.example",
        "a_b.example",
        "a.example/x",
        "a.example:443",
        "https://a.example",
        "bücher.example",
        "a" * 64 + ".example",
        ("a" * 62 + ".") * 4 + "example",
        "198.18.0.256",
        "198.018.0.2",
        "fe80::1%eth0",
    ],
)
def test_invalid_hosts_are_rejected_by_name(host: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_host(host)
    assert repr(host) in str(info.value)
    with pytest.raises(ValueError):
        make_ca(now=NOW).issue(["ok.example", host], now=NOW)


def test_issue_wants_a_list_not_a_string(ca: CertificateAuthority) -> None:
    with pytest.raises(TypeError):
        ca.issue("a.example")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ca.issue([])


# --- files --------------------------------------------------------------------------------------


def test_main_certs_writes_a_ca_and_one_leaf_per_host(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    paths = main_certs(str(directory), ["a.example", "198.18.0.2"])
    assert paths == [
        directory / "ca.pem",
        directory / "ca.key",
        directory / "a.example.pem",
        directory / "a.example.key",
        directory / "198.18.0.2.pem",
        directory / "198.18.0.2.key",
    ]
    assert mode(directory) == 0o700
    for path in paths:
        assert mode(path) == (0o600 if path.suffix == ".key" else 0o644), path
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in paths)  # no temp files

    ca = load_ca(directory)
    for host, san_entry, subject in [
        ("a.example", x509.DNSName("a.example"), DNSName("a.example")),
        (
            "198.18.0.2",
            x509.IPAddress(ipaddress.ip_address("198.18.0.2")),
            IPAddress(ipaddress.ip_address("198.18.0.2")),
        ),
    ]:
        chain = x509.load_pem_x509_certificates((directory / f"{host}.pem").read_bytes())
        assert chain[1] == ca.certificate
        # each host has its own certificate, naming only that host
        assert list(ext(chain[0], x509.SubjectAlternativeName).value) == [san_entry]
        PolicyBuilder().store(Store([ca.certificate])).build_server_verifier(subject).verify(chain[0], [])


def test_main_certs_keeps_an_existing_directory_mode(tmp_path: Path) -> None:
    tmp_path.chmod(0o750)
    main_certs(str(tmp_path), ["a.example"])
    assert mode(tmp_path) == 0o750


def test_second_call_reuses_the_ca(tmp_path: Path) -> None:
    main_certs(str(tmp_path), ["a.example"])
    first_ca = (tmp_path / "ca.pem").read_bytes()
    first_ca_key = (tmp_path / "ca.key").read_bytes()

    paths = main_certs(str(tmp_path), ["b.example"])
    assert paths == [tmp_path / "b.example.pem", tmp_path / "b.example.key"]
    assert (tmp_path / "ca.pem").read_bytes() == first_ca
    assert (tmp_path / "ca.key").read_bytes() == first_ca_key

    anchor = x509.load_pem_x509_certificate(first_ca)
    leaf = x509.load_pem_x509_certificates((tmp_path / "b.example.pem").read_bytes())[0]
    PolicyBuilder().store(Store([anchor])).build_server_verifier(DNSName("b.example")).verify(leaf, [])


def test_existing_leaf_is_not_overwritten(tmp_path: Path) -> None:
    main_certs(str(tmp_path), ["a.example"])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    with pytest.raises(FileExistsError, match=r"a\.example\.pem"):
        main_certs(str(tmp_path), ["b.example", "a.example"])
    # refused before writing anything: b.example's files were not made either
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    (tmp_path / "a.example.pem").unlink()
    with pytest.raises(FileExistsError, match=r"a\.example\.key"):
        main_certs(str(tmp_path), ["a.example"])

    main_certs(str(tmp_path), ["a.example"], overwrite=True)
    assert (tmp_path / "a.example.key").read_bytes() != before["a.example.key"]
    assert mode(tmp_path / "a.example.key") == 0o600
    assert (tmp_path / "ca.key").read_bytes() == before["ca.key"]  # overwrite never touches the CA


def test_write_refuses_existing_files(tmp_path: Path, ca: CertificateAuthority) -> None:
    ca.write(tmp_path)
    with pytest.raises(FileExistsError, match=r"ca\.pem"):
        ca.write(tmp_path)
    leaf = ca.issue(["a.example"], now=NOW)
    leaf.write(tmp_path)
    with pytest.raises(FileExistsError, match=r"a\.example\.pem"):
        leaf.write(tmp_path)
    leaf.write(tmp_path, overwrite=True)


def test_invalid_host_writes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "certs"
    with pytest.raises(ValueError, match="'bad host'"):
        main_certs(str(directory), ["a.example", "bad host"])
    assert not directory.exists()
    with pytest.raises(ValueError):
        main_certs(str(directory), [])


def test_host_named_ca_cannot_replace_the_ca(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'ca'"):
        main_certs(str(tmp_path), ["ca"])
    assert list(tmp_path.iterdir()) == []


def test_half_a_ca_pair_is_refused(tmp_path: Path) -> None:
    main_certs(str(tmp_path), ["a.example"])
    (tmp_path / "ca.key").unlink()
    with pytest.raises(FileExistsError, match=r"ca\.pem"):
        main_certs(str(tmp_path), ["b.example"])


def test_mismatched_ca_pair_is_refused(tmp_path: Path) -> None:
    main_certs(str(tmp_path), ["a.example"])
    (tmp_path / "ca.key").write_bytes(make_ca().key_pem)
    with pytest.raises(ValueError, match="not the key"):
        main_certs(str(tmp_path), ["b.example"])


# --- a real TLS handshake, in memory ------------------------------------------------------------


class MemoryLink:
    """A TLS client and server whose only connection is two pairs of MemoryBIOs (no sockets)."""

    def __init__(
        self, client_context: ssl.SSLContext, server_context: ssl.SSLContext, server_hostname: str
    ) -> None:
        self._to_client, self._from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._to_server, self._from_server = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.client = client_context.wrap_bio(
            self._to_client, self._from_client, server_hostname=server_hostname
        )
        self.server = server_context.wrap_bio(self._to_server, self._from_server, server_side=True)

    def pump(self) -> None:
        """Carry every pending byte across, both ways."""
        self._to_server.write(self._from_client.read())
        self._to_client.write(self._from_server.read())

    def handshake(self) -> MemoryLink:
        """Step both sides until both finish; the client's verification errors propagate."""
        pending = [self.client, self.server]
        for _ in range(10):
            for side in list(pending):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    continue
                pending.remove(side)
            self.pump()
            if not pending:
                return self
        raise AssertionError("handshake did not finish")


def handshake(
    client_context: ssl.SSLContext, server_context: ssl.SSLContext, server_hostname: str
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    link = MemoryLink(client_context, server_context, server_hostname).handshake()
    return link.client, link.server


@pytest.fixture
def cert_dir(tmp_path: Path) -> Path:
    main_certs(str(tmp_path), ["a.example", "198.18.0.2"])
    return tmp_path


def server_context(cert_dir: Path, host: str = "a.example") -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_dir / f"{host}.pem", cert_dir / f"{host}.key")
    return context


def client_context(cafile: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cafile))
    # Python 3.13's default; it insists on AKI/SKI and a critical basicConstraints in the CA.
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    return context


@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_handshake_succeeds_for_the_certified_name(cert_dir: Path, tls_version: ssl.TLSVersion) -> None:
    client_ctx = client_context(cert_dir / "ca.pem")
    client_ctx.maximum_version = client_ctx.minimum_version = tls_version
    link = MemoryLink(client_ctx, server_context(cert_dir), "a.example").handshake()
    assert link.client.version() == link.server.version() == tls_version.name.replace("_", ".")
    assert link.client.getpeercert()["subjectAltName"] == (("DNS", "a.example"),)

    # application data crosses in both directions under the negotiated keys
    link.client.write(b"ping")
    link.pump()
    assert link.server.read(4) == b"ping"
    link.server.write(b"pong")
    link.pump()
    assert link.client.read(4) == b"pong"


def test_tls_handshake_succeeds_for_an_ip_address(cert_dir: Path) -> None:
    client, _ = handshake(
        client_context(cert_dir / "ca.pem"), server_context(cert_dir, "198.18.0.2"), "198.18.0.2"
    )
    assert client.getpeercert()["subjectAltName"] == (("IP Address", "198.18.0.2"),)


def test_tls_handshake_fails_for_another_name(cert_dir: Path) -> None:
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        handshake(client_context(cert_dir / "ca.pem"), server_context(cert_dir), "c.example")
    assert info.value.verify_code == 62  # X509_V_ERR_HOSTNAME_MISMATCH
    assert "c.example" in info.value.verify_message


def test_tls_handshake_fails_against_an_untrusted_ca(
    cert_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = tmp_path_factory.mktemp("other")
    make_ca().write(other)
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        handshake(client_context(other / "ca.pem"), server_context(cert_dir), "a.example")
    # the server sends its CA too, and the client does not trust it
    assert info.value.verify_code == 19  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN


def test_tls_alpn_negotiates_h2(cert_dir: Path) -> None:
    client_ctx, server_ctx = client_context(cert_dir / "ca.pem"), server_context(cert_dir)
    client_ctx.set_alpn_protocols(["h2", "http/1.1"])
    server_ctx.set_alpn_protocols(["h2", "http/1.1"])
    client, server = handshake(client_ctx, server_ctx, "a.example")
    assert client.selected_alpn_protocol() == server.selected_alpn_protocol() == "h2"


def test_tls_mutual_authentication_with_a_leaf_as_client_certificate(cert_dir: Path) -> None:
    main_certs(str(cert_dir), ["client.example"])
    server_ctx = server_context(cert_dir)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_verify_locations(cert_dir / "ca.pem")
    client_ctx = client_context(cert_dir / "ca.pem")
    client_ctx.load_cert_chain(cert_dir / "client.example.pem", cert_dir / "client.example.key")
    _, server = handshake(client_ctx, server_ctx, "a.example")
    assert server.getpeercert()["subjectAltName"] == (("DNS", "client.example"),)
