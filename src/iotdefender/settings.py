"""The settings of ``iotdefender serve``: every flag, its default, and what it means."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    api_port: int = 8080
    data_dir: Path = Path("./data")
    database_url: str | None = None
    region: str = "us-east-1"
    account_id: str = "123456789012"
    credentials_file: Path | None = None
    log_format: str = "json"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    parser.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    parser.add_argument("--api-port", type=int, default=d.api_port, help="AWS IoT REST API port (default %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=d.data_dir,
                        help="state directory: the SQLite database and generated credentials (default %(default)s)")
    parser.add_argument("--database-url", default=d.database_url,
                        help="use this database instead of SQLite, e.g. postgresql://user:pass@host/db")
    parser.add_argument("--region", default=d.region, help="region in every ARN and SigV4 scope (default %(default)s)")
    parser.add_argument("--account-id", default=d.account_id, help="account id in every ARN (default %(default)s)")
    parser.add_argument("--credentials", dest="credentials_file", type=Path, default=None,
                        help="AWS-style credentials file with the access keys the API accepts")
    parser.add_argument("--log-format", choices=("json", "console"), default=d.log_format,
                        help="structured log lines as JSON (default) or for a terminal")


def settings_from(args: argparse.Namespace) -> Settings:
    names = Settings.__dataclass_fields__
    return Settings(**{k: v for k, v in vars(args).items() if k in names})
