"""A throw-away CA for the SIP over TLS tests, made with the openssl CLI: server certificates
for 127.0.0.1 (an IP SAN, which name checks read) and client certificates, each signed by it."""

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

_EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as kubernetes.io/tls Secrets name them."""

    certificate: Path  # tls.crt
    key: Path  # tls.key


class TestCa:
    """A CA in `folder`; `issue` makes certificates it signs."""

    __test__ = False  # not a pytest test class

    def __init__(self, folder: Path, name: str = "sip-test-ca") -> None:
        if shutil.which("openssl") is None:
            raise RuntimeError("openssl makes the test CA (.ci/run installs it)")
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.certificate = folder / "ca.crt"
        self._key = folder / "ca.key"
        self._openssl(
            "req", "-x509", *_EC_KEY, "-keyout", str(self._key), "-out", str(self.certificate),
            "-days", "2", "-subj", f"/CN={name}",
        )  # fmt: skip

    def issue(self, name: str, ip: str = "127.0.0.1") -> Issued:
        """A certificate for CN=`name` with the IP SAN `ip`, usable by servers and clients."""
        key, request = self.folder / f"{name}.key", self.folder / f"{name}.csr"
        certificate = self.folder / f"{name}.crt"
        self._openssl(
            "req", *_EC_KEY, "-keyout", str(key), "-out", str(request), "-subj", f"/CN={name}"
        )
        extensions = self.folder / f"{name}.ext"
        extensions.write_text(f"subjectAltName=IP:{ip}\nextendedKeyUsage=serverAuth,clientAuth\n")
        self._openssl(
            "x509", "-req", "-in", str(request), "-CA", str(self.certificate),
            "-CAkey", str(self._key), "-CAcreateserial", "-out", str(certificate),
            "-days", "2", "-extfile", str(extensions),
        )  # fmt: skip
        return Issued(certificate, key)

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.folder, check=True, capture_output=True)


@pytest.fixture()
def ca(tmp_path: Path) -> TestCa:
    """A fresh test CA."""
    return TestCa(tmp_path / "ca")
