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

# Every version a security profile has had (the row above is the newest), so the console can show
# its history and a diff between two versions; AWS keeps none, so nothing in the API reads it.
security_profile_versions = sa.Table(
    "security_profile_versions",
    metadata,
    sa.Column("profile_name", NAME, sa.ForeignKey("security_profiles.name", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("version", sa.BigInteger, primary_key=True),
    sa.Column("modified_at", EPOCH, nullable=False),
    sa.Column("document", sa.JSON, nullable=False),
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
    # Cluster mode: the thing's partition (cluster/partitions.py), filled in by the detect nodes
    # closing cloud-side windows (registry.record_partitions), so each reads its partitions'
    # registered names only. NULL until then (and on the single box): read by all, picked by name.
    sa.Column("partition", sa.Integer, nullable=True),
    sa.Index("ix_things_partition", "partition"),
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

# Surrogate key: two datapoints of one series may share a timestamp when throttling is off.
_ROW_ID = sa.BigInteger().with_variant(sa.Integer, "sqlite")

# One row per accepted report (or per cloud-side window): its retained datapoints keyed by metric
# ("metric" or "metric|dimension|IN"). One row instead of one per metric keeps the hot path to a
# single index update per report; ListMetricValues reads a thing's rows in a time range.
metric_values = sa.Table(
    "metric_values",
    metadata,
    sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("thing_name", NAME, nullable=False),
    sa.Column("ts", EPOCH, nullable=False),
    sa.Column("datapoints", sa.JSON, nullable=False),
    # The thing's partition (cluster/partitions.py), so a takeover's read of the rows not compacted
    # yet leaves the other partitions' rows in the server (no index: they are read by id). NULL in
    # rows of releases before it.
    sa.Column("partition", sa.Integer, nullable=True),
    sa.Index("ix_metric_values_thing_ts", "thing_name", "ts"),
    sa.Index("ix_metric_values_ts", "ts"),
)

thing_report_state = sa.Table(
    "thing_report_state",
    metadata,
    sa.Column("thing_name", NAME, primary_key=True),
    sa.Column("last_report_id", sa.BigInteger, nullable=False),
    sa.Column("last_report_at", EPOCH, nullable=False),
)

# Alarm state per (thing, profile, behavior, dimension): only non-idle states are stored, so a
# fleet that behaves costs no writes. Written in the same transaction as the events it causes.
alarm_states = sa.Table(
    "alarm_states",
    metadata,
    sa.Column("thing_name", NAME, primary_key=True),
    sa.Column("profile_name", NAME, primary_key=True),
    sa.Column("behavior_name", NAME, primary_key=True),
    sa.Column("dimension", sa.String(140), primary_key=True),
    sa.Column("state", sa.JSON, nullable=False),
    # The thing's partition (cluster/partitions.py): a detect node taking partitions over reads only
    # theirs. NULL in rows written before it was kept (and by nodes of that release): read by all.
    sa.Column("partition", sa.Integer, nullable=True),
    sa.Index("ix_alarm_states_partition", "partition"),
)

active_violations = sa.Table(
    "active_violations",
    metadata,
    sa.Column("violation_id", sa.String(128), primary_key=True),
    sa.Column("thing_name", NAME, nullable=False),
    sa.Column("profile_name", NAME, nullable=False),
    sa.Column("behavior_name", NAME, nullable=False),
    sa.Column("behavior", sa.JSON, nullable=False),
    sa.Column("criteria_type", sa.String(20), nullable=False),
    sa.Column("suppressed", sa.Boolean, nullable=False),
    sa.Column("last_violation_value", sa.JSON),
    sa.Column("last_violation_time", EPOCH),
    sa.Column("violation_start_time", EPOCH, nullable=False),
    sa.Index("ix_active_violations_thing", "thing_name"),
    sa.Index("ix_active_violations_profile", "profile_name"),
    sa.Index("ix_active_violations_start", "violation_start_time", "violation_id"),  # the listing's order
)

violation_events = sa.Table(
    "violation_events",
    metadata,
    sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("violation_id", sa.String(128), nullable=False),
    sa.Column("event_type", sa.String(20), nullable=False),
    sa.Column("thing_name", NAME, nullable=False),
    sa.Column("profile_name", NAME, nullable=False),
    sa.Column("behavior", sa.JSON, nullable=False),
    sa.Column("criteria_type", sa.String(20), nullable=False),
    sa.Column("suppressed", sa.Boolean, nullable=False),
    sa.Column("metric_value", sa.JSON),
    sa.Column("event_time", EPOCH, nullable=False),
    sa.Column("evidence", sa.JSON, nullable=False),
    # A copy of behavior["name"]: the console filters and groups by it (migration 0005).
    sa.Column("behavior_name", NAME),
    sa.Index("ix_violation_events_time", "event_time"),
    sa.Index("ix_violation_events_violation", "violation_id"),
    # A device's history (ListViolationEvents thingName, the console's device page) without a scan.
    sa.Index("ix_violation_events_thing_time", "thing_name", "event_time"),
    # ListViolationEvents securityProfileName and the console's behavior filter, likewise (0022).
    sa.Index("ix_violation_events_profile_time", "profile_name", "event_time"),
    sa.Index("ix_violation_events_behavior_time", "behavior_name", "event_time"),
)

# The verification state belongs to the violation (all its events share it).
violation_verification = sa.Table(
    "violation_verification",
    metadata,
    sa.Column("violation_id", sa.String(128), primary_key=True),
    sa.Column("state", sa.String(20), nullable=False),
    sa.Column("description", sa.String(1000)),
)

# Durable alert outbox: written with the event, delivered later with retries; a row that
# exhausts its attempts stays, marked dead, for operators to list.
alert_outbox = sa.Table(
    "alert_outbox",
    metadata,
    sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("target_arn", ARN, nullable=False),
    sa.Column("destination", sa.String(2048), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("created_at", EPOCH, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", EPOCH, nullable=False),
    sa.Column("status", sa.String(16), nullable=False, server_default="pending"),  # pending|sending|delivered|dead
    sa.Column("last_error", sa.Text),
    sa.Index("ix_alert_outbox_due", "status", "next_attempt_at"),
)

# Columnar copies of the numeric datapoints of metric_values, for backtests and fleet statistics:
# one row per (series, compaction run) holding three packed arrays (thing index into ``things``,
# time, value). Reading a week of one metric for 10k devices is then a few hundred blobs instead of
# millions of JSON documents (bench/backtest.py). ``history_compaction`` remembers the last
# metric_values id copied, so a reader takes the segments plus the rows after it.
metric_segments = sa.Table(
    "metric_segments",
    metadata,
    sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("series", sa.String(400), nullable=False),
    sa.Column("min_ts", EPOCH, nullable=False),
    sa.Column("max_ts", EPOCH, nullable=False),
    sa.Column("points", sa.Integer, nullable=False),
    sa.Column("things", sa.LargeBinary, nullable=False),  # orjson list of thing names
    sa.Column("thing_index", sa.LargeBinary, nullable=False),  # int32, little endian
    sa.Column("times", sa.LargeBinary, nullable=False),  # float64
    sa.Column("vals", sa.LargeBinary, nullable=False),  # float64
    # Cluster mode: the partition of every thing in the segment (a compaction run writes one segment
    # per series and partition), so a takeover reads its partitions' hour, not the fleet's. NULL: a
    # segment of the whole fleet (the single box, and releases before partitions were kept).
    sa.Column("partition", sa.Integer, nullable=True),
    sa.Index("ix_metric_segments_series_time", "series", "min_ts", "max_ts"),
    sa.Index("ix_metric_segments_series_partition_time", "series", "partition", "max_ts"),
    sa.Index("ix_metric_segments_series_id", "series", "id"),  # a series' segments after a latest-values fold
)

# Each device's latest datapoint of a numeric series, folded from its segments up to
# ``up_to_segment`` (store/latest_values.py): the console's fleet distribution reads this and the
# segments after it, not every segment of the range. One row per series, packed like a segment
# (names, times, values: one entry per device). The row with the empty series name keeps the
# highest segment id whose series were looked for.
metric_latest = sa.Table(
    "metric_latest",
    metadata,
    sa.Column("series", sa.String(400), primary_key=True),
    sa.Column("up_to_segment", sa.BigInteger, nullable=False),
    sa.Column("things", sa.LargeBinary, nullable=False),  # orjson list of thing names
    sa.Column("times", sa.LargeBinary, nullable=False),  # float64, little endian
    sa.Column("vals", sa.LargeBinary, nullable=False),  # float64
    # When the console last read the series (or the row was made): only series read within a week
    # are kept folded (migration 0024). NULL in rows made before it.
    sa.Column("read_at", EPOCH, nullable=True),
)

history_compaction = sa.Table(
    "history_compaction",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("last_row_id", sa.BigInteger, nullable=False),
)

# Console sessions that logout ends (console/sessions.py): in the database so that a session
# started on one api node is known to every other (a load balancer without sticky sessions).
console_sessions = sa.Table(
    "console_sessions",
    metadata,
    sa.Column("session_id", sa.String(64), primary_key=True),
    sa.Column("expires_at", sa.Float, nullable=False),  # epoch seconds
)

# Cluster mode (docs/cluster.md). The fence of a partition is the fencing token (the NATS lease
# revision) of its newest owner: a batch transaction commits only while the fence still equals its
# node's token (cluster/fencing.py). A plain integer, no sequence behind it. (A batch redelivered
# after a crash between commit and ack is recognised by ``thing_report_state``.)
cluster_partition_fences = sa.Table(
    "cluster_partition_fences",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("token", sa.BigInteger, nullable=False),
)

# No longer read or written: the highest stream sequence a committed batch of a partition covered,
# which nodes of the release before 0012 still write in every detect transaction. Kept so that
# they run on while a rolling upgrade replaces them (expand/contract, docs/cluster.md); a later
# release drops it. A database that ran the first, dropping version of 0012 lacks it: nothing
# here minds.
cluster_partition_progress = sa.Table(
    "cluster_partition_progress",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("last_sequence", sa.BigInteger, nullable=False),
)

# Cloud-side metrics in cluster mode (cloud/cluster_parts.py): the broker nodes' parts of each
# device's window, kept from their delivery (before the ack) until their window is closed, and how
# far each partition's windows are closed (``through_thing``: the window is closed for the things
# named up to it; NULL: closed for all), so a detect node's successor after a crash closes the
# window open at the crash from every part, and never closes a window, or a thing's share of one, twice.
# The parts of the last window closed for all things are kept until the next is (``seen_window``
# names it; NULL: not kept, as by a release before 0015): who saw which device in it tells the
# successor which devices of an incomplete window may have the rest of it on a missing publisher.
cluster_cloud_parts = sa.Table(
    "cluster_cloud_parts",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("window_index", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("thing", sa.String(128), primary_key=True),
    sa.Column("node", sa.String(200), primary_key=True),
    sa.Column("part", sa.LargeBinary, nullable=False),
)

# The same parts, a set per row (migration 0020): a broker node's parts of one window for many devices
# of a partition, as one detect node batch received them (``parts``: msgpack of (thing, part)
# pairs). A row per device's part cost each detect node ~6 s of PostgreSQL writes at every window's
# end at 200,000 devices a node, and its reports waited for them; a row per set is a few hundred.
# ``things_digest`` (of the set's things) makes a set received again replace itself; ``id`` orders
# them (a later copy of a part wins). Written once every live node reads them (``cloud-part-sets``):
# a node of the release before reads only ``cluster_cloud_parts``.
cluster_cloud_part_sets = sa.Table(
    "cluster_cloud_part_sets",
    metadata,
    sa.Column("id", _ROW_ID, primary_key=True, autoincrement=True),
    sa.Column("partition", sa.Integer, nullable=False),
    sa.Column("window_index", sa.BigInteger, nullable=False),
    sa.Column("node", sa.String(200), nullable=False),
    sa.Column("things_digest", sa.LargeBinary, nullable=False),
    sa.Column("parts", sa.LargeBinary, nullable=False),
    sa.UniqueConstraint("partition", "window_index", "node", "things_digest",
                        name="uq_cluster_cloud_part_sets_set"),
)

cluster_cloud_progress = sa.Table(
    "cluster_cloud_progress",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("window_index", sa.BigInteger, nullable=False),
    sa.Column("through_thing", sa.String(128), nullable=True),
    sa.Column("seen_window", sa.BigInteger, nullable=True),
)

# Each publisher's latest end of window in each partition (cloud/window_ends.py): which windows
# it has handed all its parts of, so a detect node that takes the partition over knows who to wait for.
cluster_cloud_ends = sa.Table(
    "cluster_cloud_ends",
    metadata,
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("node", sa.String(200), primary_key=True),
    sa.Column("began_window", sa.BigInteger, nullable=False),
    sa.Column("since_window", sa.BigInteger, nullable=False),
    sa.Column("window_index", sa.BigInteger, nullable=False),
    sa.Column("last", sa.Boolean, nullable=False),
    # Whether the publisher's devices were connected to its own broker (window_ends.End.hosts).
    sa.Column("hosts", sa.Boolean, nullable=False, server_default=sa.false()),
)

# Cluster mode: the broker node each device's connection is on, its address and since when, as
# its detect node last recorded them (cloud/cluster_windows.py): the next owner of its partition
# knows where its idle devices are (a broker node killed later, their address). A row per
# connected device, written when its connection changes.
cluster_cloud_connections = sa.Table(
    "cluster_cloud_connections",
    metadata,
    sa.Column("thing", sa.String(128), primary_key=True),
    sa.Column("partition", sa.Integer, nullable=False, index=True),
    sa.Column("node", sa.String(200), nullable=False),
    sa.Column("address", sa.String(64), nullable=False),
    sa.Column("since", EPOCH, nullable=False),
)

# The single box's cloud-side windows still open at a graceful stop (cloud/service.py): each
# device's accumulators (a msgpack ``ClientWindow``) by window, resumed at the next start.
cloud_open_windows = sa.Table(
    "cloud_open_windows",
    metadata,
    sa.Column("window_index", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("thing", sa.String(128), primary_key=True),
    sa.Column("part", sa.LargeBinary, nullable=False),
)

# The window open at the last graceful stop, kept even when no device had an event in it
# (cloud/service.py ``suspend``): the next start closes it, and the window it starts in, for every
# monitored device (0 when idle), as the grid would have without the stop.
cloud_open_grid = sa.Table(
    "cloud_open_grid",
    metadata,
    sa.Column("window_index", sa.BigInteger, primary_key=True, autoincrement=False),
)

# The devices disconnected at the end of the last window closed, and since when (cloud/service.py,
# cloud/cluster_windows.py): ``aws:disconnect-duration`` of a device that stays away counts from
# its disconnection across a restart or a detect node's takeover, instead of restarting at 0 (a
# false "alarm-cleared" for a device still offline). Rows are written only when a device's
# connection changes; ``partition`` is its cluster partition (loaded with it by a new owner).
cloud_disconnected = sa.Table(
    "cloud_disconnected",
    metadata,
    sa.Column("thing", sa.String(128), primary_key=True),
    sa.Column("partition", sa.Integer, nullable=False, index=True),
    sa.Column("since", EPOCH, nullable=False),
)

# ML Detect (docs/detection.md). ``ml_training`` is the progress of one ML behavior of a profile
# (one model per (profile, behavior); a behavior has at most one dimension): when its data
# collection started (kept across restarts, so a restart resumes instead of starting the training
# period over), the status AWS reports, and which stored version is active. ``fingerprint`` is
# what a model depends on (metric, dimension, the profile's targets): when it changes, training
# starts over. ``ml_models`` keeps every version built, with its training window, so a version can
# be shown and a backtest can replay with the version active at each moment.
ml_training = sa.Table(
    "ml_training",
    metadata,
    sa.Column("profile_name", NAME, sa.ForeignKey("security_profiles.name", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("behavior_name", NAME, primary_key=True),
    sa.Column("series", sa.String(400), nullable=False),
    sa.Column("dimension", sa.String(140), nullable=False),
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("collection_start", EPOCH, nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # PENDING_BUILD | ACTIVE | EXPIRED
    sa.Column("datapoints", sa.BigInteger, nullable=False),  # in the trailing period, at the last attempt
    sa.Column("datapoints_percentage", sa.Float, nullable=False),
    sa.Column("last_attempt_at", EPOCH),
    sa.Column("last_refresh_at", EPOCH),  # the last successful build
    sa.Column("active_version", sa.Integer),
)

ml_models = sa.Table(
    "ml_models",
    metadata,
    sa.Column("profile_name", NAME, sa.ForeignKey("security_profiles.name", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("behavior_name", NAME, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("series", sa.String(400), nullable=False),
    sa.Column("dimension", sa.String(140), nullable=False),
    sa.Column("window_start", EPOCH, nullable=False),
    sa.Column("window_end", EPOCH, nullable=False),
    sa.Column("datapoints", sa.BigInteger, nullable=False),
    sa.Column("devices", sa.Integer, nullable=False),
    sa.Column("trained_at", EPOCH, nullable=False),
    sa.Column("model", sa.LargeBinary, nullable=False),
)

# Mitigation actions (CreateMitigationAction …): an account's named actions, of any of AWS's types
# (audit's too: the API stores and lists them), applied by Detect mitigation tasks.
mitigation_actions = sa.Table(
    "mitigation_actions",
    metadata,
    sa.Column("name", NAME, primary_key=True),
    sa.Column("arn", ARN, nullable=False),
    sa.Column("action_id", sa.String(64), nullable=False),
    sa.Column("action_type", sa.String(40), nullable=False),
    sa.Column("role_arn", ARN, nullable=False),
    sa.Column("action_params", sa.JSON, nullable=False),
    sa.Column("creation_date", EPOCH, nullable=False),
    sa.Column("last_modified_date", EPOCH, nullable=False),
)

# Detect mitigation tasks (StartDetectMitigationActionsTask): what was asked, the actions as they
# were defined when it started (AWS returns them as ``actionsDefinition``), and its progress. A node
# runs a task under a lease (``claimed_by`` until ``claimed_until``): a node that dies mid-task
# leaves it to another, which carries on with the executions not done yet.
detect_mitigation_tasks = sa.Table(
    "detect_mitigation_tasks",
    metadata,
    sa.Column("task_id", NAME, primary_key=True),
    sa.Column("client_request_token", sa.String(64), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),  # IN_PROGRESS | SUCCESSFUL | FAILED | CANCELED
    sa.Column("start_time", EPOCH, nullable=False),
    sa.Column("end_time", EPOCH),
    sa.Column("target", sa.JSON, nullable=False),
    sa.Column("occurrence_range", sa.JSON),
    sa.Column("only_active", sa.Boolean, nullable=False),
    sa.Column("include_suppressed", sa.Boolean, nullable=False),
    sa.Column("actions", sa.JSON, nullable=False),
    sa.Column("planned", sa.Boolean, nullable=False),  # its executions are written
    sa.Column("claimed_by", sa.String(200)),
    sa.Column("claimed_until", EPOCH),
    sa.Index("ix_detect_mitigation_tasks_start", "start_time", "task_id"),
    sa.Index("ix_detect_mitigation_tasks_status", "status"),
)

# One action on one violation's thing, in the order the task gives its actions.
detect_mitigation_executions = sa.Table(
    "detect_mitigation_executions",
    metadata,
    sa.Column("task_id", NAME, sa.ForeignKey("detect_mitigation_tasks.task_id", ondelete="CASCADE"),
              primary_key=True),
    sa.Column("violation_id", sa.String(128), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True, autoincrement=False),  # the action's place in the task
    sa.Column("action_name", NAME, nullable=False),
    sa.Column("thing_name", NAME, nullable=False),
    sa.Column("start_date", EPOCH),
    sa.Column("end_date", EPOCH),
    sa.Column("status", sa.String(20), nullable=False),  # IN_PROGRESS | SUCCESSFUL | FAILED | SKIPPED
    sa.Column("error_code", sa.String(64)),
    sa.Column("message", sa.String(2048)),
    sa.Column("listed_at", EPOCH, nullable=False),  # the task's start: the listing's order and time filter
    sa.Index("ix_detect_mitigation_executions_thing", "thing_name", "listed_at"),
    sa.Index("ix_detect_mitigation_executions_violation", "violation_id"),
    sa.Index("ix_detect_mitigation_executions_listed", "listed_at", "task_id"),
)

# Device certificates registered through the API (RegisterCertificate, RegisterCertificateWithoutCA)
# and their status, which the broker enforces: a certificate that is not ACTIVE cannot connect
# (brokers/certificate_gate.py). ``certificate_id`` is the SHA-256 of the DER encoding, as AWS IoT's.
# A deleted certificate keeps its row as DELETED, hidden from the API and still refused: a device
# certificate signed by the broker's CA connects unless it is registered in another status, so
# forgetting a revoked certificate would let it in again.
certificates = sa.Table(
    "certificates",
    metadata,
    sa.Column("certificate_id", sa.String(64), primary_key=True),
    sa.Column("arn", ARN, nullable=False),
    sa.Column("pem", sa.Text, nullable=False),
    sa.Column("common_name", sa.String(256)),
    sa.Column("ca_certificate_id", sa.String(64)),
    sa.Column("status", sa.String(24), nullable=False),  # ACTIVE | INACTIVE | REVOKED | DELETED
    sa.Column("certificate_mode", sa.String(16), nullable=False),  # DEFAULT (with a CA) | SNI_ONLY
    sa.Column("not_before", EPOCH, nullable=False),
    sa.Column("not_after", EPOCH, nullable=False),
    sa.Column("customer_version", sa.Integer, nullable=False),
    sa.Column("generation_id", sa.String(64), nullable=False),
    sa.Column("creation_date", EPOCH, nullable=False),
    sa.Column("last_modified_date", EPOCH, nullable=False),
    # When a thing was last attached to it or detached from it (0030): the broker's gate reads the
    # certificates whose attachments changed, as it reads those written, without changing the
    # lastModifiedDate DescribeCertificate answers.
    sa.Column("things_modified_date", EPOCH),
    sa.Index("ix_certificates_created", "creation_date", "certificate_id"),
    sa.Index("ix_certificates_status", "status"),
    sa.Index("ix_certificates_common_name", "common_name"),
    sa.Index("ix_certificates_modified", "last_modified_date"),  # what a gate's period reads (0029)
    sa.Index("ix_certificates_things_modified", "things_modified_date"),  # and this (0030)
)

# Certificates attached to things (AttachThingPrincipal): a device whose certificate is attached to
# things connects only with one of their names as its client id (brokers/certificate_gate.py).
# ``exclusive``: attached with EXCLUSIVE_THING, then the only thing the certificate is attached to.
thing_principals = sa.Table(
    "thing_principals",
    metadata,
    sa.Column("thing_name", NAME, primary_key=True),
    sa.Column("certificate_id", sa.String(64), primary_key=True),
    sa.Column("exclusive", sa.Boolean, nullable=False),
    sa.Column("attached_date", EPOCH, nullable=False),
    sa.Index("ix_thing_principals_certificate", "certificate_id", "thing_name"),
)
