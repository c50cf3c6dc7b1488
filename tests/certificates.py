"""Throwaway certificate authorities and certificates for the TLS tests (the `cryptography` package)."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dspy_registry.server.config import Config


@dataclass(frozen=True)
class Issued:
    certificate: bytes  # PEM
    key: bytes  # PEM

    def save(self, folder: Path, stem: str) -> None:
        """Writes {stem}.crt and {stem}.key into `folder`, where servers and clients read them."""
        (folder / f"{stem}.crt").write_bytes(self.certificate)
        (folder / f"{stem}.key").write_bytes(self.key)


def _name(common_name: str, organization: str = "dspy-registry tests") -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Authority:
    """A certificate authority that signs server and client certificates."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(name)
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, server: bool, names: list[str] | None = None) -> Issued:
        """A certificate for `common_name`; a server's for `names` (DNS), else localhost and 127.0.0.1."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName(n) for n in names]
                    if names
                    else [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        certificate = builder.sign(self.key, hashes.SHA256())
        return Issued(certificate.public_bytes(serialization.Encoding.PEM), _pem_key(key))


def tls_config(folder: Path, ca: Authority, *, mutual: bool = False, **more: Any) -> Config:
    """A server on a free port, its certificate from `ca` for localhost (`mutual`: callers need one too).

    Writes server.crt, server.key and ca.crt into `folder`; the store and the admin token go there too.
    """
    issued = ca.issue("localhost", server=True)
    issued.save(folder, "server")
    (folder / "ca.crt").write_bytes(ca.pem)
    return Config(
        listen="127.0.0.1:0",
        database=f"sqlite:///{folder / 'r.db'}",
        admin_token_file=str(folder / "admin.token"),
        tls_cert=str(folder / "server.crt"),
        tls_key=str(folder / "server.key"),
        tls_client_ca=str(folder / "ca.crt") if mutual else "",
        **more,
    )
