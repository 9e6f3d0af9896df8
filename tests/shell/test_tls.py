"""TLS on the gateway (a self-signed certificate made here with `cryptography`), and secrets read
from files rather than the command line."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os

import pytest

from cluster.exceptions import InputError


def _self_signed(tmp_path, name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture()
def tls_gateway(tmp_path):
    from actors.router import Router
    from cluster.shell.gateway import Gateway, GatewayConfig
    from cluster.state import MemoryStore

    cert, key = _self_signed(tmp_path, "gateway")
    store = MemoryStore()
    router = Router(store, [])
    gw = Gateway(router, store, GatewayConfig(port=0, token="t0ken", tls_cert=cert, tls_key=key), "echo").start()
    yield gw, cert, tmp_path
    gw.stop(0.2)
    router.close()


def test_a_tls_gateway_answers_a_client_that_verifies_it(tls_gateway):
    from cluster.shell.client import Client, RpcError

    gw, cert, tmp_path = tls_gateway
    with Client(gw.address, token="t0ken", tls_ca=cert, timeout_s=10) as c:
        assert c.status().model == "echo"
    with Client(gw.address, token="t0ken", tls_ca="", timeout_s=5) as plain:  # no TLS: refused
        with pytest.raises(RpcError) as info:
            plain.status()
        assert info.value.code == "UNAVAILABLE"
    other, _ = _self_signed(tmp_path, "impostor")
    with Client(gw.address, token="t0ken", tls_ca=other, timeout_s=5) as wrong:  # untrusted certificate
        with pytest.raises(RpcError) as info:
            wrong.status()
        assert info.value.code == "UNAVAILABLE"


def test_tls_config_errors_name_the_field(tmp_path):
    from cluster.shell.gateway import GatewayConfig

    with pytest.raises(InputError, match="^tls_cert: give both"):
        GatewayConfig(tls_cert="x.pem")
    with pytest.raises(InputError, match="^apply_token: must differ"):
        GatewayConfig(token="same", apply_token="same")
    bad = tmp_path / "not.pem"
    bad.write_text("hello")
    from cluster.shell.secrets import read_pem

    with pytest.raises(InputError, match="^tls_cert: .* is not a PEM file"):
        read_pem(str(bad), "tls_cert")


def test_secrets_come_from_owner_only_files(tmp_path):
    from cluster.shell.secrets import read_secret

    f = tmp_path / "token"
    f.write_text("  s3cret \nignored\n")
    os.chmod(f, 0o600)
    assert read_secret(str(f), "--token-file") == "s3cret"
    os.chmod(f, 0o644)
    with pytest.raises(InputError, match="^--token-file: .* readable by other users .*chmod 600"):
        read_secret(str(f), "--token-file")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    os.chmod(empty, 0o600)
    with pytest.raises(InputError, match="holds no secret"):
        read_secret(str(empty), "--token-file")
    with pytest.raises(InputError, match="cannot read"):
        read_secret(str(tmp_path / "missing"), "--token-file")
