"""The settings of ``iotdefender serve``: every flag, its default, and what it means."""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

DAY = 86400.0


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    api_port: int = 8080
    api_read_timeout: float = 60.0  # api/http_limits.py REQUEST_READ_TIMEOUT_S
    data_dir: Path = Path("./data")
    database_url: str | None = None
    database_timeout: float = 10.0  # store/database.py ROUND_TRIP_TIMEOUT_S
    backtest_max_datapoints: int | None = None  # backtest/read_budget.py: None, a quarter of the memory
    region: str = "us-east-1"
    account_id: str = "123456789012"
    credentials_file: Path | None = None
    log_format: str = "auto"
    metrics_token_file: Path | None = None
    detection_worker: bool = True
    ingest_queue_limit: int = 10_000
    mqtt_port: int = 1883
    mqtt_tls_port: int | None = None
    endpoint_address: str | None = None
    mqtt_ca: str | None = None
    mqtt_ca_key: str | None = None  # the key of --mqtt-ca: CreateKeysAndCertificate signs with it (controlplane/issuer.py)
    mqtt_cert: str | None = None
    mqtt_key: str | None = None
    mqtt_auth: str | None = None
    mqtt_password_file: Path | None = None
    mqtt_acl: str = "own"
    #: Under --mqtt-auth cert, which certificates connect: "signed" (any the CA signed, unless
    #: registered in another status than ACTIVE) or "registered" (only those registered ACTIVE, as
    #: on AWS IoT).
    mqtt_certificates: str = "signed"
    mqtt_acl_file: Path | None = None  # Mosquitto acl_file for application topics (docs/mqtt-policy.md)
    mqtt_publish_rate: float = 100.0  # PUBLISHes a second per connection (AWS IoT Core's limit); 0: none
    mqtt_max_subscriptions: int = 50  # topic filters one connection may hold (AWS IoT Core's quota); 0: none
    mqtt_url: str | None = None
    mqtt_client_id: str = "iotdefender-intake"  # brokers/external.py: the reader's persistent session
    time_scale: float = 1.0
    report_min_interval: float | None = None
    metric_retention: float | None = None
    invalidation_period: float | None = None
    metrics_window: float | None = None
    cloud_metrics: bool = True
    nats_events_url: str | None = None
    nats_monitor_url: str | None = None
    violation_retention: float | None = None
    sns_endpoint_url: str | None = None
    alert_subscriptions: Path | None = None
    ml_training_period: float | None = None
    ml_min_datapoints: int = 25_000
    ml_refresh_period: float | None = None
    ml_expiry: float | None = None
    cluster_url: str | None = None  # nats://H1:P1[,nats://H2:P2]: cluster mode (docs/cluster.md)
    roles: str = "broker,api,detect"
    cluster_lease_ttl: float = 5.0  # a partition lease / member entry without renewal expires (takeover bound)
    cluster_outcome_timeout: float = 10.0  # a broker node waits this long for a report's commit outcome

    @property
    def cluster_urls(self) -> list[str]:
        return [u.strip() for u in (self.cluster_url or "").split(",") if u.strip()]

    @property
    def cluster_url_for_logs(self) -> str | None:
        """``--cluster-url`` with each URL's password replaced by ``***`` (logs and error messages)."""
        if self.cluster_url is None:
            return None
        return ",".join(without_password(url) for url in self.cluster_url.split(","))

    @property
    def mqtt_url_for_logs(self) -> str | None:
        """``--mqtt-url`` with its password replaced by ``***`` (the ``ready`` line's endpoint)."""
        return without_password(self.mqtt_url) if self.mqtt_url is not None else None

    @property
    def role_set(self) -> frozenset[str]:
        """The roles of this node (cluster mode; a single box is all three)."""
        return frozenset(r.strip() for r in self.roles.split(",") if r.strip())

    def scaled(self, explicit: float | None, default_seconds: float) -> float:
        """A time constant: its own flag if given, else the AWS default divided by --time-scale."""
        return explicit if explicit is not None else default_seconds / self.time_scale

    @property
    def effective_report_min_interval(self) -> float:
        return self.scaled(self.report_min_interval, 300.0)  # AWS: one report per 5 minutes per device

    @property
    def effective_mqtt_session_expiry(self) -> float:
        # AWS: a persistent session is kept 1 hour after its device disconnects. The default broker
        # counts it in whole hours (brokers/mosquitto/config.py), so at most that is scaled.
        return self.scaled(None, 3600.0)

    @property
    def effective_mqtt_autosave_interval(self) -> float:
        return self.scaled(None, 60.0)  # the default broker's sessions saved to disk (not an AWS period)

    @property
    def effective_metric_retention(self) -> float:
        return self.scaled(self.metric_retention, 14 * DAY)  # AWS: detect metrics kept 14 days

    @property
    def effective_mqtt_publish_rate(self) -> float:
        """PUBLISHes a second per connection: a rate, so --time-scale multiplies it (a flood of a
        scaled window's messages is no more limited than one of a real 5-minute window)."""
        return self.mqtt_publish_rate * self.time_scale

    @property
    def effective_minute(self) -> float:
        """The unit of ``aws:disconnect-duration``."""
        return self.scaled(None, 60.0)

    @property
    def effective_metrics_window(self) -> float:
        return self.scaled(self.metrics_window, 300.0)  # AWS: cloud-side metrics on a 5-minute grid

    @property
    def effective_invalidation_period(self) -> float:
        return self.scaled(self.invalidation_period, 2 * DAY)  # AWS: silent > 2 days -> alarm-invalidated

    @property
    def effective_violation_retention(self) -> float:
        return self.scaled(self.violation_retention, 30 * DAY)  # AWS: violations kept 30 days

    @property
    def effective_mitigation_task_retention(self) -> float:
        return self.scaled(None, 90 * DAY)  # AWS: Detect mitigation action tasks kept 90 days

    @property
    def effective_ml_training_period(self) -> float:
        return self.scaled(self.ml_training_period, 14 * DAY)  # AWS: 14 days before the first model

    @property
    def effective_ml_refresh_period(self) -> float:
        return self.scaled(self.ml_refresh_period, DAY)  # AWS: the model is rebuilt daily

    @property
    def effective_ml_expiry(self) -> float:
        return self.scaled(self.ml_expiry, 30 * DAY)  # AWS: not refreshed for 30 days -> no evaluation

    def ml_problem(self) -> str | None:
        """Why the ML Detect settings cannot work, or None.

        A model is built on the trailing training period of *retained* datapoints: metric
        retention shorter than that period would starve every model of its oldest days, silently.
        """
        periods = {"--ml-training-period": self.effective_ml_training_period,
                   "--ml-refresh-period": self.effective_ml_refresh_period, "--ml-expiry": self.effective_ml_expiry}
        for flag, seconds in periods.items():
            if not seconds > 0:
                return f"{flag} must be a positive number of seconds"
        if self.ml_min_datapoints < 1:
            return "--ml-min-datapoints must be at least 1"
        if self.effective_ml_expiry <= self.effective_ml_refresh_period:
            return (f"--ml-expiry ({self.effective_ml_expiry:g} s) must be longer than --ml-refresh-period "
                    f"({self.effective_ml_refresh_period:g} s): a model is expired when it was not rebuilt for that long")
        if self.effective_metric_retention < self.effective_ml_training_period:
            return (f"--metric-retention ({self.effective_metric_retention:g} s) is shorter than --ml-training-period "
                    f"({self.effective_ml_training_period:g} s): ML Detect models are built on the retained datapoints "
                    "of the whole training period")
        return None

    @property
    def effective_mqtt_auth(self) -> str:
        """``none`` is only a default while every listener is bound to loopback."""
        if self.mqtt_auth is not None:
            return self.mqtt_auth
        if is_loopback(self.host):
            return "none"
        raise ValueError(f"--host {self.host} is not loopback: choose --mqtt-auth password or cert "
                         "(or --mqtt-auth none explicitly)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def positive_seconds(text: str) -> float:
    """An argparse type: a finite number of seconds above 0 (argparse names the flag in its error)."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of seconds")
    return seconds


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    d = Settings()
    parser.add_argument("--host", default=d.host, help="address to listen on (default %(default)s)")
    parser.add_argument("--api-port", type=int, default=d.api_port, help="AWS IoT REST API port (default %(default)s)")
    parser.add_argument("--api-read-timeout", type=positive_seconds, default=d.api_read_timeout,
                        help="seconds a request may take to arrive whole (its head and body), from its first byte "
                             "or the connection's opening or last answer; past them 408 and the connection is "
                             "closed (default %(default)s)")
    parser.add_argument("--data-dir", type=Path, default=d.data_dir,
                        help="state directory: the SQLite database and generated credentials (default %(default)s)")
    parser.add_argument("--database-url", default=d.database_url,
                        help="use this database instead of SQLite, e.g. postgresql://user:pass@host/db")
    parser.add_argument("--database-timeout", type=float, default=d.database_timeout,
                        help="PostgreSQL: seconds one statement may go unanswered before its connection is "
                             "given up and the batch answered ServiceUnavailable (a frozen server or a hung "
                             "disk); backtests, ML training reads and migrations are exempt; 0 = no bound "
                             "(default %(default)s; docs/durability.md)")
    parser.add_argument("--backtest-max-datapoints", type=int, default=d.backtest_max_datapoints,
                        help="datapoints of one metric a backtest or the console's preview reads at once; a range "
                             "holding more is refused (InvalidRequestException) rather than run out of memory; "
                             "0 = no bound (default: a quarter of this machine's memory at 120 bytes a datapoint)")
    parser.add_argument("--region", default=d.region, help="region in every ARN and SigV4 scope (default %(default)s)")
    parser.add_argument("--account-id", default=d.account_id, help="account id in every ARN (default %(default)s)")
    parser.add_argument("--credentials", dest="credentials_file", type=Path, default=None,
                        help="AWS-style credentials file with the access keys the API accepts")
    parser.add_argument("--metrics-token-file", type=Path, default=None,
                        help="file holding a token /metrics then asks for as 'Authorization: Bearer <token>' "
                             "(Prometheus: authorization.credentials_file); default: /metrics is open, as "
                             "Prometheus exporters usually are (docs/api-behaviour.md)")
    parser.add_argument("--log-format", choices=("auto", "json", "console"), default=d.log_format,
                        help="log lines as JSON or readable for a terminal; auto (default): readable when "
                             "stderr is a terminal, JSON otherwise (files, journald, log shippers)")
    parser.add_argument("--detection-worker", choices=("on", "off"), default="on" if d.detection_worker else "off",
                        help="store and evaluate batches in a child process, on a core of its own (default on)")
    parser.add_argument("--ingest-queue-limit", type=int, default=d.ingest_queue_limit,
                        help="reports that may wait to be stored and answered; beyond it new reports are rejected "
                             "ServiceOverloaded (default %(default)s: about 2 s of the measured ingest ceiling, "
                             "a few tens of MB)")
    mqtt = parser.add_argument_group("MQTT")
    mqtt.add_argument("--mqtt-url", default=None,
                      help="join this broker as a client instead of running Mosquitto: mqtt[s]://user:pass@host:port "
                           "(--mqtt-ca verifies an mqtts broker)")
    mqtt.add_argument("--mqtt-client-id", default=d.mqtt_client_id,
                      help="with --mqtt-url: the client id of the service's persistent session there, whose "
                           "queued reports it reads after a restart (default %(default)s); every node of one "
                           "cluster uses the same, and two services on one broker each their own")
    mqtt.add_argument("--mqtt-port", type=int, default=d.mqtt_port, help="plain MQTT listener of the service's Mosquitto (default %(default)s)")
    mqtt.add_argument("--mqtt-tls-port", type=int, default=None, help="MQTT over TLS listener (e.g. 8883)")
    mqtt.add_argument("--endpoint-address", default=None,
                      help="the host name devices connect to, answered by DescribeEndpoint (default: the host "
                           "the API request was addressed to)")
    mqtt.add_argument("--mqtt-ca", default=None, help="CA certificate file that signs device certificates")
    mqtt.add_argument("--mqtt-ca-key", default=None,
                      help="the unencrypted PEM private key of --mqtt-ca: CreateKeysAndCertificate and "
                           "CreateCertificateFromCsr then issue device certificates signed by it (default: they "
                           "answer InvalidRequestException; the service holds no CA key)")
    mqtt.add_argument("--mqtt-cert", default=None, help="server certificate file for the TLS listener")
    mqtt.add_argument("--mqtt-key", default=None, help="server private key file for the TLS listener")
    mqtt.add_argument("--mqtt-auth", choices=("none", "password", "cert"), default=None,
                      help="device authentication; 'none' (identity = client id) is the default only on loopback; "
                           "'cert': the client id is the certificate's common name, or a thing it is attached to "
                           "(AttachThingPrincipal)")
    mqtt.add_argument("--mqtt-password-file", type=Path, default=None,
                      help="username:password lines for --mqtt-auth password ($argon2 hashes accepted)")
    mqtt.add_argument("--mqtt-certificates", choices=("signed", "registered"), default=d.mqtt_certificates,
                      help="under --mqtt-auth cert: 'signed' (default): any certificate --mqtt-ca signed connects, "
                           "unless registered in another status than ACTIVE; 'registered': only certificates "
                           "registered ACTIVE (RegisterCertificate), as on AWS IoT")
    mqtt.add_argument("--mqtt-acl", choices=("own", "any"), default=d.mqtt_acl,
                      help="'own': a device reports only under its own thing name (default); 'any': for any thing")
    mqtt.add_argument("--mqtt-acl-file", type=Path, default=None,
                      help="Mosquitto ACL file (acl_file syntax, e.g. 'pattern readwrite devices/%%c/#') governing "
                           "devices' application topics; without it they are open to every authenticated device. "
                           "Read at start: a change needs a restart (docs/mqtt-policy.md)")
    mqtt.add_argument("--mqtt-publish-rate", type=float, default=d.mqtt_publish_rate,
                      help="PUBLISHes a second one device connection may make on the service's broker; beyond "
                           "them its messages are dropped, as AWS IoT Core drops them past its 100 a second "
                           "(default 100, multiplied by --time-scale; 0: no limit; docs/mqtt-policy.md)")
    mqtt.add_argument("--mqtt-max-subscriptions", type=int, default=d.mqtt_max_subscriptions,
                      help="topic filters one device connection may hold on the service's broker; a SUBSCRIBE "
                           "past them is refused, as AWS IoT Core refuses more than its 50 a connection "
                           "(default 50; 0: no limit; docs/mqtt-policy.md)")
    mqtt.add_argument("--no-cloud-metrics", dest="cloud_metrics", action="store_false",
                      help="do not account broker events (cloud-side metrics) on the service's broker")
    mqtt.add_argument("--nats-events-url", default=None,
                      help="cloud-side metrics from a NATS server: its system account, nats://user:pass@host:4222")
    mqtt.add_argument("--nats-monitor-url", default=None,
                      help="that NATS server's monitoring endpoint, e.g. http://host:8222")
    timing = parser.add_argument_group("time constants")
    timing.add_argument("--time-scale", type=float, default=d.time_scale,
                        help="divide every time constant by this factor, for demos and tests (default 1)")
    timing.add_argument("--report-min-interval", type=float, default=None,
                        help="seconds between two accepted reports of a thing (default 300 / time-scale)")
    timing.add_argument("--metric-retention", type=float, default=None,
                        help="seconds datapoints are kept for ListMetricValues (default 14 days / time-scale)")
    timing.add_argument("--metrics-window", type=float, default=None,
                        help="seconds of the cloud-side metrics window grid (default 300 / time-scale)")
    timing.add_argument("--invalidation-period", type=float, default=None,
                        help="seconds of silence after which an alarm is invalidated (default 2 days / time-scale)")
    timing.add_argument("--violation-retention", type=float, default=None,
                        help="seconds violation events are kept (default 30 days / time-scale)")
    ml = parser.add_argument_group("ML Detect (docs/detection.md)")
    ml.add_argument("--ml-training-period", type=float, default=None,
                    help="seconds of datapoints a model is built on, and before its first build "
                         "(default 14 days / time-scale)")
    ml.add_argument("--ml-min-datapoints", type=int, default=d.ml_min_datapoints,
                    help="datapoints over the training period a model needs (default %(default)s, as AWS)")
    ml.add_argument("--ml-refresh-period", type=float, default=None,
                    help="seconds between two builds of an active model (default 1 day / time-scale)")
    ml.add_argument("--ml-expiry", type=float, default=None,
                    help="seconds a model may go without a successful build before it stops evaluating "
                         "(default 30 days / time-scale)")
    alerts = parser.add_argument_group("alerts")
    alerts.add_argument("--sns-endpoint-url", default=None,
                        help="publish alerts to the profiles' SNS topics at this SNS-compatible endpoint")
    alerts.add_argument("--alert-subscriptions", type=Path, default=None,
                        help="JSON file: SNS topic ARN -> webhooks signed with HMAC (docs/alerts.md)")


    cluster = parser.add_argument_group("cluster mode (docs/cluster.md)")
    cluster.add_argument("--cluster-url", default=None,
                         help="NATS JetStream servers, nats://H1:P1[,nats://H2:P2]: run as one node of a cluster "
                              "(needs --database-url postgresql://...)")
    cluster.add_argument("--roles", default=d.roles,
                         help="what this cluster node does, any of broker, api, detect (default %(default)s)")
    cluster.add_argument("--cluster-lease-ttl", type=float, default=d.cluster_lease_ttl,
                         help="seconds a partition lease lives without renewal: the takeover after a detect "
                              "node's crash (default %(default)s; every node must use the same, 1 to 300)")
    cluster.add_argument("--cluster-outcome-timeout", type=float, default=d.cluster_outcome_timeout,
                         help="seconds a broker node waits for a report's commit before answering "
                              "ServiceUnavailable (default %(default)s)")


def settings_from(args: argparse.Namespace) -> Settings:
    names = Settings.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in names}
    if isinstance(values.get("detection_worker"), str):
        values["detection_worker"] = values["detection_worker"] == "on"
    return Settings(**values)


def without_password(url: str) -> str:
    """``url`` with its password replaced by ``***`` (logs and error messages)."""
    parts = urlsplit(url.strip())
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url.strip()
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}"))
