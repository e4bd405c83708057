"""The relational schema, in SQLAlchemy Core. Alembic migrations create exactly these tables.

Nested AWS structures that are only ever read and written whole (behaviors, alert targets,
attributes) are JSON columns; everything the service filters or joins on is a real column.
Times are epoch seconds (double precision): the API speaks epoch seconds and both SQLite and
PostgreSQL index them cheaply.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

NAME = sa.String(128)
ARN = sa.String(2048)
EPOCH = sa.Float(precision=53)

security_profiles = sa.Table(
    "security_profiles",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("arn", ARN, nullable=False),
    sa.Column("description", sa.Text),
    sa.Column("behaviors", sa.JSON, nullable=False),
    sa.Column("alert_targets", sa.JSON),
    sa.Column("additional_metrics_to_retain", sa.JSON),
    sa.Column("additional_metrics_to_retain_v2", sa.JSON),
    sa.Column("metrics_export_config", sa.JSON),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("creation_date", EPOCH, nullable=False),
    sa.Column("last_modified_date", EPOCH, nullable=False),
)

security_profile_targets = sa.Table(
    "security_profile_targets",
    metadata,
    sa.Column("profile_name", NAME, sa.ForeignKey("security_profiles.name", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("target_arn", ARN, primary_key=True),
    sa.Column("attached_at", EPOCH, nullable=False),
    sa.Index("ix_security_profile_targets_target", "target_arn"),
)

custom_metrics = sa.Table(
    "custom_metrics",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("arn", ARN, nullable=False),
    sa.Column("metric_type", sa.String(32), nullable=False),
    sa.Column("display_name", sa.String(128)),
    sa.Column("client_request_token", sa.String(64)),
    sa.Column("creation_date", EPOCH, nullable=False),
    sa.Column("last_modified_date", EPOCH, nullable=False),
)

dimensions = sa.Table(
    "dimensions",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("arn", ARN, nullable=False),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("string_values", sa.JSON, nullable=False),
    sa.Column("client_request_token", sa.String(64)),
    sa.Column("creation_date", EPOCH, nullable=False),
    sa.Column("last_modified_date", EPOCH, nullable=False),
)

tags = sa.Table(
    "tags",
    metadata,
    sa.Column("resource_arn", ARN, primary_key=True),
    sa.Column("key", NAME, primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)

things = sa.Table(
    "things",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("thing_id", sa.String(64), nullable=False, unique=True),
    sa.Column("arn", ARN, nullable=False),
    sa.Column("thing_type_name", NAME),
    sa.Column("attributes", sa.JSON, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("creation_date", EPOCH, nullable=False),
)

thing_groups = sa.Table(
    "thing_groups",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("group_id", sa.String(64), nullable=False, unique=True),
    sa.Column("arn", ARN, nullable=False),
    sa.Column("parent_name", NAME, sa.ForeignKey("thing_groups.name")),
    sa.Column("description", sa.Text),
    sa.Column("attributes", sa.JSON, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column("creation_date", EPOCH, nullable=False),
    sa.Index("ix_thing_groups_parent", "parent_name"),
)

thing_group_members = sa.Table(
    "thing_group_members",
    metadata,
    sa.Column("group_name", NAME, sa.ForeignKey("thing_groups.name", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("thing_name", NAME, sa.ForeignKey("things.name", ondelete="CASCADE"), primary_key=True),
    sa.Index("ix_thing_group_members_thing", "thing_name"),
)
