"""Test certificates made with the openssl CLI: a CA, a server and a client certificate."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Pki:
    """Files of one throw-away certificate authority and the certificates it signed."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    res = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60
    )
    if res.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {res.stderr}")


def _signed(
    directory: Path, name: str, subject: str, *, ca_cert: Path, ca_key: Path, ext: str
) -> tuple[Path, Path]:
    key = directory / f"{name}.key"
    csr = directory / f"{name}.csr"
    cert = directory / f"{name}.pem"
    extfile = directory / f"{name}.ext"
    extfile.write_text(ext)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(key), cwd=directory)
    _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr), cwd=directory)
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
        "-CAcreateserial", "-days", "2", "-sha256", "-extfile", str(extfile), "-out", str(cert),
        cwd=directory,
    )  # fmt: skip
    return cert, key


def make_pki(directory: Path, name: str = "ca") -> Pki:
    """A new CA in `directory` with a server certificate for 127.0.0.1/localhost and a client."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = directory / f"{name}.key"
    ca_cert = directory / f"{name}.pem"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(ca_key), "-out", str(ca_cert), "-days", "2", "-subj", f"/CN=test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign",
        cwd=directory,
    )  # fmt: skip
    server_cert, server_key = _signed(
        directory,
        f"{name}-server",
        "/CN=localhost",
        ca_cert=ca_cert,
        ca_key=ca_key,
        ext="subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    client_cert, client_key = _signed(
        directory,
        f"{name}-client",
        "/CN=vessel-042",
        ca_cert=ca_cert,
        ca_key=ca_key,
        ext="extendedKeyUsage=clientAuth\n",
    )
    return Pki(ca_cert, ca_key, server_cert, server_key, client_cert, client_key)
