"""Development certificates: a throwaway CA and per-host leaf certificates (``yastack certs``).

Testing TLS termination needs a server certificate that a real client accepts with hostname
checking on, not ``verify=False``. This module makes a private CA and leaves shaped like a public
web PKI certificate (the profile OpenSSL's ``X509_STRICT`` mode, Python 3.13's default, and the
CA/Browser-Forum verifier in ``cryptography.x509.verification`` check), so a test that passes
against it does not pass only because verification was relaxed.

The layers: :func:`make_ca` and :meth:`CertificateAuthority.issue` build objects in memory and
write nothing; ``write()`` puts them on disk (private keys mode 0600); :func:`main_certs` is what
the CLI calls. Keys are ECDSA P-256: small, fast to make, and accepted by every TLS stack.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CertificateAuthority",
    "LeafCertificate",
    "load_ca",
    "main_certs",
    "make_ca",
    "normalize_host",
]

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key"
DEFAULT_CA_NAME = "trio_yastack development CA"

# Clocks of the two ends of a test differ a little; a certificate born "now" would be rejected as
# not yet valid by a peer whose clock runs slightly behind.
_BACKDATE = datetime.timedelta(minutes=1)

# One DNS label (RFC 1035 2.3.1, with RFC 1123 2.1's leading digits): letters, digits, inner hyphens.
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_MAX_DNS_NAME = 253  # RFC 1035 2.3.4, without the trailing dot


def normalize_host(host: str) -> str:
    """The canonical spelling of ``host`` (a DNS name or an IP literal), or ValueError naming it.

    Validated here rather than left to the verifier so a typo fails when the certificate is made,
    not at the first handshake. DNS names are lower-cased (they compare case-insensitively, and the
    name becomes a file name) and may start with one ``*.`` wildcard label, the only wildcard web
    PKI clients honour; IP literals are written the way :mod:`ipaddress` prints them.
    """
    if not isinstance(host, str):
        raise ValueError(f"host must be a string, not {host!r}")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
            raise ValueError(f"invalid host {host!r}: a certificate cannot name an IPv6 zone")
        return str(address)
    name = host.lower()
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
        # "*.com" would cover a whole top-level domain; clients refuse it, so refuse it here too.
        if len(labels) < 2:
            raise ValueError(f"invalid host {host!r}: a wildcard needs at least two labels after '*.'")
    if (
        not name.isascii()
        or len(name) > _MAX_DNS_NAME
        or not labels
        or not all(_LABEL.fullmatch(label) for label in labels)
        or labels[-1].isdigit()  # "198.18.0.256" is a mistyped address, not a name
    ):
        raise ValueError(
            f"invalid host {host!r}: expected a DNS name (letters, digits and inner hyphens, an "
            "optional leading '*.', internationalized names as xn-- A-labels) or an IP address"
        )
    return name


def _general_name(host: str) -> x509.GeneralName:
    """The SAN entry for an already normalized host: an iPAddress for literals, else a dNSName.

    Clients match an IP they connected to only against iPAddress entries (RFC 6125 / RFC 9525),
    so an address written as a DNS name would never verify.
    """
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _file_stem(host: str) -> str:
    """The file name (without suffix) for a leaf whose first host is ``host``.

    A ``*`` in a file name is a trap in every shell, so ``*.a.example`` is stored as
    ``_wildcard.a.example`` (mkcert's convention). The single-label host ``ca`` is refused: its
    files would replace the CA's.
    """
    if host == "ca":
        raise ValueError("host 'ca' would be written over ca.pem/ca.key; list another name first")
    return "_wildcard" + host[1:] if host.startswith("*.") else host


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_file(path: Path, data: bytes, *, mode: int, overwrite: bool) -> None:
    """Write ``data`` to ``path`` with ``mode``, atomically, never exposing a key with looser bits.

    The bytes go to a temporary file that :func:`tempfile.mkstemp` creates 0600 in the same
    directory, then are renamed over ``path``: a reader sees the old file or the whole new one,
    and a private key never exists, even briefly, with the umask's permissions.
    """
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            os.fchmod(file.fileno(), mode)
        if overwrite:
            os.replace(temporary, path)
        else:
            # link() fails if path appeared meanwhile, where replace() would silently clobber it.
            os.link(temporary, path)
            os.unlink(temporary)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@dataclass(frozen=True)
class LeafCertificate:
    """A server/client certificate, its private key, and the CA certificate that signed it.

    The CA certificate is kept so :attr:`chain_pem` can be what a server sends: leaf, then CA.
    """

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    ca_certificate: x509.Certificate

    @property
    def hosts(self) -> list[str]:
        """The names and addresses the certificate covers, in SAN order (the first is the CN)."""
        san = self.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return [str(name.value) for name in san]

    @property
    def cert_pem(self) -> bytes:
        """The leaf certificate alone, PEM."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def chain_pem(self) -> bytes:
        """Leaf then CA, PEM: the file ``ssl.SSLContext.load_cert_chain`` and servers expect."""
        return self.cert_pem + self.ca_certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The private key, PKCS#8 PEM, unencrypted (a development key must load without a prompt)."""
        return _key_pem(self.private_key)

    def paths(self, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Where :meth:`write` puts the chain and the key: ``<first-host>.pem`` and ``.key``."""
        stem = _file_stem(self.hosts[0])
        return Path(directory, f"{stem}.pem"), Path(directory, f"{stem}.key")

    def write(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> list[Path]:
        """Write the chain (0644) and the key (0600) into an existing ``directory``; return the paths.

        Raises FileExistsError naming the file if either exists and ``overwrite`` is false; the
        check covers both files before either is written, so a refusal leaves nothing half done.
        """
        chain_path, key_path = self.paths(directory)
        if not overwrite:
            for path in (chain_path, key_path):
                if path.exists():
                    raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
        _write_file(key_path, self.key_pem, mode=0o600, overwrite=overwrite)
        _write_file(chain_path, self.chain_pem, mode=0o644, overwrite=overwrite)
        return [chain_path, key_path]


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA certificate and its key, able to issue leaf certificates."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        """The CA certificate, PEM: what clients load as their trust anchor."""
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The CA private key, PKCS#8 PEM, unencrypted."""
        return _key_pem(self.private_key)

    def issue(
        self, hosts: list[str], days: int = 30, *, now: datetime.datetime | None = None
    ) -> LeafCertificate:
        """A new key and a certificate for ``hosts`` (DNS names and/or IP literals) signed by this CA.

        The first host is the subject CN (for humans and old tools); clients match only the SAN.
        The leaf never outlives the CA: a chain is invalid once its anchor expires, so a longer
        ``days`` would only promise a validity it cannot deliver. ``now`` is for tests.
        """
        if isinstance(hosts, str):
            raise TypeError("hosts must be a list of host names, not a single string")
        names = list(dict.fromkeys(normalize_host(host) for host in hosts))
        if not names:
            raise ValueError("a certificate needs at least one host")
        if days < 1:
            raise ValueError(f"days must be at least 1, not {days}")
        now = now or _now()
        not_after = min(now + datetime.timedelta(days=days), self.certificate.not_valid_after_utc)
        if not_after <= now:
            raise ValueError(
                f"the CA expired on {self.certificate.not_valid_after_utc:%Y-%m-%d}; "
                "remove ca.pem and ca.key to make a new one"
            )
        key = ec.generate_private_key(ec.SECP256R1())
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                # EC keys sign (ECDHE handshakes) or agree (static ECDH); they never encipher keys.
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
            )
            .sign(self.private_key, hashes.SHA256())
        )
        return LeafCertificate(certificate, key, self.certificate)

    def paths(self, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Where :meth:`write` puts the certificate and the key: ``ca.pem`` and ``ca.key``."""
        return Path(directory, CA_CERT_FILE), Path(directory, CA_KEY_FILE)

    def write(self, directory: str | os.PathLike[str], *, overwrite: bool = False) -> list[Path]:
        """Write ``ca.pem`` (0644) and ``ca.key`` (0600) into an existing ``directory``.

        Refuses (FileExistsError naming the file) to replace either unless ``overwrite``: a new CA
        silently invalidates every leaf the old one issued.
        """
        cert_path, key_path = self.paths(directory)
        if not overwrite:
            for path in (cert_path, key_path):
                if path.exists():
                    raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
        _write_file(key_path, self.key_pem, mode=0o600, overwrite=overwrite)
        _write_file(cert_path, self.cert_pem, mode=0o644, overwrite=overwrite)
        return [cert_path, key_path]


def make_ca(
    common_name: str = DEFAULT_CA_NAME, days: int = 30, *, now: datetime.datetime | None = None
) -> CertificateAuthority:
    """A new self-signed CA that may sign leaves but no intermediate CAs (``path_length=0``).

    Short-lived by default: a development CA's key sits unencrypted on disk, and anyone holding
    it can impersonate any site to a machine that trusts it. ``now`` is for tests.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    now = now or _now()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate, key)


def load_ca(directory: str | os.PathLike[str]) -> CertificateAuthority:
    """The CA stored in ``directory`` by :meth:`CertificateAuthority.write`.

    Checks that the key belongs to the certificate and that the certificate is a CA with a
    SubjectKeyIdentifier, so a stray or mismatched file fails here with ValueError instead of as
    leaves that never verify.
    """
    cert_path, key_path = Path(directory, CA_CERT_FILE), Path(directory, CA_KEY_FILE)
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an EC private key")
    if key.public_key() != certificate.public_key():
        raise ValueError(f"{key_path} is not the key of {cert_path}")
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    except x509.ExtensionNotFound as exc:
        raise ValueError(f"{cert_path} is not a CA certificate made by this tool") from exc
    if not constraints.ca:
        raise ValueError(f"{cert_path} is not a CA certificate")
    return CertificateAuthority(certificate, key)


def main_certs(directory: str, hosts: list[str], *, days: int = 30, overwrite: bool = False) -> list[Path]:
    """``yastack certs DIR --hosts ...``: a leaf per host under DIR's CA; return the paths written.

    DIR is created 0700 if missing. An existing ``ca.pem``/``ca.key`` pair is reused, so hosts can
    be added later under the CA clients already trust; otherwise a new CA is made and written.
    ``overwrite`` applies to leaf files only, never to the CA. Every host is validated and every
    target file checked before anything is written, so a bad host or an existing file leaves the
    directory as it was. Prints nothing: the CLI reports the returned paths.
    """
    if isinstance(hosts, str):
        raise TypeError("hosts must be a list of host names, not a single string")
    names = list(dict.fromkeys(normalize_host(host) for host in hosts))
    if not names:
        raise ValueError("no hosts given")
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    root = Path(directory)
    if not root.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        root.mkdir(mode=0o700)
        root.chmod(0o700)  # mkdir's mode is filtered by the umask
    cert_path, key_path = Path(root, CA_CERT_FILE), Path(root, CA_KEY_FILE)
    present = [path for path in (cert_path, key_path) if path.exists()]
    if len(present) == 1:
        raise FileExistsError(
            f"{present[0]} exists without its pair; restore the missing file or remove it to make a new CA"
        )
    stems = [_file_stem(name) for name in names]
    if not overwrite:
        for stem in stems:
            for suffix in (".pem", ".key"):
                path = Path(root, stem + suffix)
                if path.exists():
                    raise FileExistsError(f"{path} exists (pass overwrite=True to replace it)")
    written: list[Path] = []
    if present:
        ca = load_ca(root)
    else:
        ca = make_ca(days=days)
        written += ca.write(root)
    for name in names:
        written += ca.issue([name], days=days).write(root, overwrite=overwrite)
    return written
