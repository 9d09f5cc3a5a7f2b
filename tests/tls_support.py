"""A certificate authority made for one test, and server certificates it signs, for https on loopback."""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class LoopbackCA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    folder: Path

    @property
    def cert_file(self) -> Path:
        """The CA's certificate, PEM: what a client trusts."""
        path = self.folder / "ca.pem"
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        return path

    def server_context(self, name: str) -> ssl.SSLContext:
        """A TLS server context whose certificate, signed by this CA, is for ``name`` only."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(subject=name, public_key=key.public_key(), issuer=self.cert.subject, signer=self.key,
                            ca=False, names=[name])
        (self.folder / f"{name}.pem").write_bytes(
            cert.public_bytes(serialization.Encoding.PEM)
            + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.folder / f"{name}.pem")
        return context


def make_ca(folder: Path) -> LoopbackCA:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Payments test CA")])
    cert = _certificate(subject="Payments test CA", public_key=key.public_key(), issuer=name, signer=key, ca=True,
                        names=[])
    return LoopbackCA(key, cert, folder)


def _certificate(*, subject: str, public_key: ec.EllipticCurvePublicKey, issuer: x509.Name,
                 signer: ec.EllipticCurvePrivateKey, ca: bool, names: list[str]) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                          encipher_only=False, decipher_only=False), critical=True)
    else:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                                        critical=False)
    return builder.sign(signer, hashes.SHA256())
