"""SQL for security profiles and their targets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from iotdefender.store.pagination import scan_rows
from iotdefender.store.rows import get_by_name, update_versioned
from iotdefender.store.schema import security_profile_targets as targets
from iotdefender.store.schema import security_profile_versions as versions
from iotdefender.store.schema import security_profiles

# What a version records: the members an UpdateSecurityProfile can change.
VERSIONED_COLUMNS = ("description", "behaviors", "alert_targets", "additional_metrics_to_retain",
                     "additional_metrics_to_retain_v2", "metrics_export_config")


def get(conn: Connection, name: str) -> dict[str, Any] | None:
    return get_by_name(conn, security_profiles, name)


def insert(conn: Connection, **values: Any) -> None:
    conn.execute(security_profiles.insert().values(**values))
    _record_version(conn, name=values["name"])


def update(conn: Connection, name: str, expected_version: int, **values: Any) -> bool:
    """Compare-and-set update; the new version is also kept in the profile's history."""
    if not update_versioned(conn, security_profiles, name, expected_version, **values):
        return False
    _record_version(conn, name=name)
    return True


def _record_version(conn: Connection, name: str) -> None:
    """Copy the profile as it now is into its history, in the same transaction as the write."""
    row = get(conn, name)
    assert row is not None, "recorded right after the write, in its transaction"
    conn.execute(versions.insert().values(profile_name=name, version=row["version"],
                                          modified_at=row["last_modified_date"],
                                          document={c: row[c] for c in VERSIONED_COLUMNS}))


def version_history(conn: Connection, name: str) -> list[dict[str, Any]]:
    """Every kept version of a profile, newest first: version, modified_at and the document."""
    query = sa.select(versions.c.version, versions.c.modified_at, versions.c.document).where(
        versions.c.profile_name == name).order_by(versions.c.version.desc())
    return [dict(r) for r in conn.execute(query).mappings()]


def delete(conn: Connection, name: str) -> None:
    conn.execute(targets.delete().where(targets.c.profile_name == name))
    conn.execute(versions.delete().where(versions.c.profile_name == name))
    conn.execute(security_profiles.delete().where(security_profiles.c.name == name))


def scan(conn: Connection, after: str | None) -> Iterator[Any]:
    return scan_rows(conn, sa.select(security_profiles), security_profiles.c.name, after)


def scan_names_and_arns(conn: Connection, after: str | None) -> Iterator[Any]:
    query = sa.select(security_profiles.c.name, security_profiles.c.arn)
    return scan_rows(conn, query, security_profiles.c.name, after)


def all_profiles(conn: Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(sa.select(security_profiles)).mappings()]


def lock_target(conn: Connection, target_arn: str) -> None:
    """Serialise attachments to one target so the 5-profile limit holds under concurrency.

    SQLite already serialises writers (transactions start with BEGIN IMMEDIATE); on PostgreSQL
    a transaction-scoped advisory lock on the target's hash does the same for that target only.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext(:arn))"), {"arn": target_arn})


def targets_of(conn: Connection, profile_name: str) -> list[str]:
    return list(
        conn.execute(
            sa.select(targets.c.target_arn).where(targets.c.profile_name == profile_name).order_by(targets.c.target_arn)
        ).scalars()
    )


def profiles_on(conn: Connection, target_arns: list[str]) -> list[tuple[str, str]]:
    """(profile name, target ARN) pairs attached to any of the targets."""
    rows = conn.execute(
        sa.select(targets.c.profile_name, targets.c.target_arn)
        .where(targets.c.target_arn.in_(target_arns))
        .order_by(targets.c.target_arn, targets.c.profile_name)
    )
    return [tuple(r) for r in rows]  # type: ignore[misc]


def count_on(conn: Connection, target_arn: str) -> int:
    return int(conn.execute(sa.select(sa.func.count()).where(targets.c.target_arn == target_arn)).scalar_one())


def is_attached(conn: Connection, profile_name: str, target_arn: str) -> bool:
    query = sa.select(sa.literal(1)).where(targets.c.profile_name == profile_name, targets.c.target_arn == target_arn)
    return conn.execute(query).first() is not None


def attach(conn: Connection, profile_name: str, target_arn: str, now: float) -> None:
    conn.execute(targets.insert().values(profile_name=profile_name, target_arn=target_arn, attached_at=now))


def detach(conn: Connection, profile_name: str, target_arn: str) -> None:
    conn.execute(targets.delete().where(targets.c.profile_name == profile_name, targets.c.target_arn == target_arn))


def detach_target(conn: Connection, target_arn: str) -> None:
    conn.execute(targets.delete().where(targets.c.target_arn == target_arn))


def attachments(conn: Connection) -> dict[str, list[str]]:
    """Every attachment, as target ARN -> names of the profiles attached to it."""
    out: dict[str, list[str]] = {}
    for name, arn in conn.execute(sa.select(targets.c.profile_name, targets.c.target_arn)):
        out.setdefault(arn, []).append(name)
    return out
