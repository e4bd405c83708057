"""Access keys the API accepts.

Keys come from the environment (``IOTDEFENDER_ACCESS_KEY_ID`` + ``IOTDEFENDER_SECRET_ACCESS_KEY``),
from a credentials file given with ``--credentials``, or are generated into the data directory
on first start. Files use the AWS shared-credentials format, so the generated file works as is
with ``AWS_SHARED_CREDENTIALS_FILE`` for boto3 and the AWS CLI.
"""

from __future__ import annotations

import configparser
import hashlib
import hmac
import os
import secrets
import string
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AccessKey:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None


class CredentialStore:
    def __init__(self, keys: list[AccessKey]) -> None:
        self._keys = {k.access_key_id: k for k in keys}

    def get(self, access_key_id: str) -> AccessKey | None:
        return self._keys.get(access_key_id)

    def __len__(self) -> int:
        return len(self._keys)

    def check_secret(self, access_key_id: str, secret_access_key: str) -> bool:
        """The console's login: the same key pair a boto3 user signs with, compared in constant time."""
        key = self._keys.get(access_key_id)
        return key is not None and hmac.compare_digest(key.secret_access_key.encode(), secret_access_key.encode())

    def derive_secret(self, purpose: str) -> str:
        """A secret that changes when the access keys change (rotating keys ends console sessions)."""
        material = "\n".join(f"{k}:{v.secret_access_key}" for k, v in sorted(self._keys.items()))
        return hmac.new(material.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def read_credentials_file(path: Path) -> list[AccessKey]:
    """Every section with aws_access_key_id / aws_secret_access_key is one key."""
    parser = configparser.ConfigParser()
    if not parser.read(path):
        raise FileNotFoundError(f"credentials file {path} cannot be read")
    keys = []
    for section in parser.sections():
        entry = parser[section]
        if "aws_access_key_id" in entry and "aws_secret_access_key" in entry:
            keys.append(
                AccessKey(
                    entry["aws_access_key_id"].strip(),
                    entry["aws_secret_access_key"].strip(),
                    entry.get("aws_session_token", "").strip() or None,
                )
            )
    if not keys:
        raise ValueError(f"credentials file {path} holds no aws_access_key_id/aws_secret_access_key pair")
    return keys


def generate_key() -> AccessKey:
    """An access key shaped like AWS's: 20 upper-case characters and a 40-character secret."""
    alphabet = string.ascii_uppercase + "234567"
    key_id = "AKID" + "".join(secrets.choice(alphabet) for _ in range(16))
    secret = "".join(secrets.choice(string.ascii_letters + string.digits + "+/") for _ in range(40))
    return AccessKey(key_id, secret)


def write_credentials_file(path: Path, key: AccessKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(
            "[default]\n"
            f"aws_access_key_id = {key.access_key_id}\n"
            f"aws_secret_access_key = {key.secret_access_key}\n"
        )


def load_credentials(
    credentials_file: Path | None, data_dir: Path, environ: dict[str, str]
) -> tuple[CredentialStore, Path | None]:
    """Resolve the key source; returns the store and the generated file's path, if any."""
    env_id = environ.get("IOTDEFENDER_ACCESS_KEY_ID")
    env_secret = environ.get("IOTDEFENDER_SECRET_ACCESS_KEY")
    if env_id and env_secret:
        token = environ.get("IOTDEFENDER_SESSION_TOKEN") or None
        return CredentialStore([AccessKey(env_id, env_secret, token)]), None
    if credentials_file is not None:
        return CredentialStore(read_credentials_file(credentials_file)), None
    generated = data_dir / "credentials"
    if not generated.exists():
        write_credentials_file(generated, generate_key())
    return CredentialStore(read_credentials_file(generated)), generated
