"""A throwaway certificate authority for one local cluster run (the `cryptography` package).

`issue_run_certificates(directory, server_ips, clients)` writes `ca.crt`, the broker's
`server.crt`/`server.key` (valid for `server_ips`) and a `<name>.crt`/`<name>.key` pair
per client (common name = the name given). Keys are EC P-256, valid one day; the CA's
key is not kept, so nothing else can ever be signed by it.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Mapping, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=1)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(directory: Path, stem: str, key: ec.EllipticCurvePrivateKey, cert) -> None:
    (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / f"{stem}.key"
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )


def issue_run_certificates(
    directory: Path, server_ips: Sequence[str], clients: Mapping[str, str]
) -> None:
    """CA, server certificate for `server_ips`, and client certificates {file stem: CN}."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("oakestra-net local run CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (directory / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def issue(stem: str, common_name: str, usage, names=None) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        _write(directory, stem, key, builder.sign(ca_key, hashes.SHA256()))

    addresses = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in server_ips]
    issue("server", "oakestra-net broker", ExtendedKeyUsageOID.SERVER_AUTH, addresses)
    for stem, common_name in clients.items():
        issue(stem, common_name, ExtendedKeyUsageOID.CLIENT_AUTH)
