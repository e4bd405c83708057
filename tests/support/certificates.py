"""A throwaway PKI made with the openssl command: a CA, a server certificate, device certificates."""

from __future__ import annotations

import subprocess
from pathlib import Path


def _run(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class Pki:
    def __init__(self, root: Path, server_ip: str) -> None:
        self.root = root
        self.ca_key, self.ca_cert = root / "ca.key", root / "ca.pem"
        _run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=iotdefender test CA",
             "-keyout", str(self.ca_key), "-out", str(self.ca_cert))
        self.server_cert, self.server_key = self.issue("server", f"subjectAltName=IP:{server_ip},DNS:localhost")

    def issue(self, common_name: str, extension: str | None = None) -> tuple[Path, Path]:
        key, csr, cert = (self.root / f"{common_name}.{ext}" for ext in ("key", "csr", "pem"))
        _run("req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={common_name}",
             "-keyout", str(key), "-out", str(csr))
        args = ["x509", "-req", "-in", str(csr), "-CA", str(self.ca_cert), "-CAkey", str(self.ca_key),
                "-CAcreateserial", "-days", "2", "-out", str(cert)]
        if extension:
            ext_file = self.root / f"{common_name}.ext"
            ext_file.write_text(extension + "\n")
            args += ["-extfile", str(ext_file)]
        _run(*args)
        return cert, key
