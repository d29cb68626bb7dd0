"""Throw-away PKI for the server tests, made with the openssl CLI (no extra Python deps).

`make_pki(dir)` writes: a serving CA + a server cert for 127.0.0.1/localhost, a front-proxy CA with
a client cert (CN front-proxy-client) and one with another CN, and an unrelated CA with a client
cert of the right CN (to prove that the issuer, not the name, is what counts).
"""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

_CNF = """\
[req]
distinguished_name = dn
[dn]
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
"""


def _run(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=d)
    _run(
        "req",
        "-x509",
        "-new",
        "-key",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        "-days",
        "2",
        "-subj",
        f"/CN={name}",
        "-config",
        "openssl.cnf",
        "-extensions",
        "v3_ca",
        cwd=d,
    )


def _leaf(d: Path, name: str, *, cn: str, ca: str, usage: str, sans: str = "") -> None:
    _run("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=d)
    _run(
        "req",
        "-new",
        "-key",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={cn}",
        "-config",
        "openssl.cnf",
        cwd=d,
    )
    ext = [
        "basicConstraints = CA:FALSE",
        "keyUsage = critical, digitalSignature",
        f"extendedKeyUsage = {usage}",
    ]
    if sans:
        ext.append(f"subjectAltName = {sans}")
    (d / f"{name}.ext").write_text("\n".join(ext) + "\n")
    _run(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-sha256",
        "-extfile",
        f"{name}.ext",
        "-out",
        f"{name}.crt",
        cwd=d,
    )


@dataclasses.dataclass(frozen=True)
class Pki:
    dir: Path

    def crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def pair(self, name: str) -> tuple[str, str]:
        return str(self.crt(name)), str(self.key(name))


def make_pki(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    (d / "openssl.cnf").write_text(_CNF)
    _ca(d, "serving-ca")
    _ca(d, "front-proxy-ca")
    _ca(d, "rogue-ca")
    _leaf(
        d,
        "server",
        cn="ext-metrics",
        ca="serving-ca",
        usage="serverAuth",
        sans="DNS:localhost,IP:127.0.0.1",
    )
    _leaf(d, "proxy", cn="front-proxy-client", ca="front-proxy-ca", usage="clientAuth")
    _leaf(d, "proxy-other-cn", cn="somebody-else", ca="front-proxy-ca", usage="clientAuth")
    _leaf(d, "rogue", cn="front-proxy-client", ca="rogue-ca", usage="clientAuth")
    return Pki(d)
