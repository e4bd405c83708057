"""The ``iotdefender`` command line."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from iotdefender import __version__
from iotdefender.logging_setup import configure_logging
from iotdefender.settings import Settings, add_serve_arguments, settings_from

if TYPE_CHECKING:
    from iotdefender.pipeline.worker_standby import WorkerStandby


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iotdefender", description="Self-hosted AWS IoT Device Defender Detect")
    parser.add_argument("--version", action="version", version=f"iotdefender {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the service (API, storage) with embedded defaults")
    add_serve_arguments(serve)
    simulate = commands.add_parser("simulate", help="run a simulated fleet of Device Defender devices")
    simulate.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883", help="broker (default %(default)s)")
    simulate.add_argument("--devices", type=int, default=10, help="number of devices (default %(default)s)")
    simulate.add_argument("--interval", type=float, default=300.0,
                          help="seconds between reports of a device (AWS: 300; match --report-min-interval)")
    simulate.add_argument("--duration", type=float, default=600.0, help="seconds to run (default %(default)s)")
    simulate.add_argument("--format", choices=("json", "cbor"), default="json")
    simulate.add_argument("--short-keys", action="store_true", help="AWS's short key names (hed, met, ...)")
    simulate.add_argument("--no-custom-metrics", dest="custom_metrics", action="store_false",
                          help="omit cpu_usage, temperature and firmware (which must exist as custom metrics)")
    simulate.add_argument("--prefix", default="device-", help="thing names are PREFIX0000, PREFIX0001, ...")
    simulate.add_argument("--anomaly", action="append", default=[], metavar="KIND:THING",
                          help="e.g. new-port:device-0003; kinds: new-port, unknown-network, traffic-burst, "
                               "auth-storm, reconnect-loop, message-flood")
    simulate.add_argument("--register-endpoint", default=None, metavar="URL",
                          help="create each device as a thing through the API at URL first (AWS credentials "
                               "from the usual chain, e.g. AWS_SHARED_CREDENTIALS_FILE)")
    simulate.add_argument("--region", default="us-east-1", help="region for --register-endpoint")
    simulate.add_argument("--anomaly-start", type=float, default=60.0, help="seconds after start (default 60)")
    simulate.add_argument("--anomaly-stop", type=float, default=180.0, help="seconds after start (default 180)")
    backtest = commands.add_parser("backtest", help="replay retained history through behaviors before saving them")
    from iotdefender.backtest.arguments import add_arguments as add_backtest_arguments

    add_backtest_arguments(backtest)
    demo = commands.add_parser("demo", help="serve + a sample profile + a misbehaving simulated fleet")
    demo.add_argument("--data-dir", type=Path, default=Path("./demo-data"))
    demo.add_argument("--duration", type=float, default=90.0)
    demo.add_argument("--api-port", type=int, default=8080)
    demo.add_argument("--mqtt-port", type=int, default=1883)
    demo.add_argument("--exit", action="store_true", help="stop the service when the simulation ends "
                      "(default: keep it running for the console and the AWS CLI until Ctrl-C)")
    args = parser.parse_args(argv)

    if args.command == "simulate":
        return _simulate(parser, args)
    if args.command == "backtest":
        from iotdefender.backtest.command import run as run_backtest

        return run_backtest(args)
    if args.command == "demo":
        from iotdefender.simulator.demo import run_demo

        return run_demo(args.data_dir, args.api_port, args.mqtt_port, args.duration, keep_running=not args.exit)

    if args.command == "serve":
        settings = settings_from(args)
        standby = None
        if settings.cluster_url is None and settings.detection_worker:
            from iotdefender.pipeline.worker_standby import WorkerStandby

            standby = WorkerStandby.start()  # it runs while this process imports the service
        try:
            _serve(parser, settings, standby)
        finally:
            if standby is not None:
                standby.discard()  # if the service never took it
    return 0


def _serve(parser: argparse.ArgumentParser, settings: Settings, standby: WorkerStandby | None) -> None:
    from iotdefender.service import ConfigurationError, run, serve

    configure_logging(settings.log_format)
    try:
        if settings.cluster_url is not None:
            from iotdefender.cluster_serve import serve_cluster

            run(settings, serve_cluster)
        else:
            run(settings, functools.partial(serve, standby=standby))
    except (ConfigurationError, FileNotFoundError) as error:
        parser.exit(2, f"iotdefender: error: {error}\n")
    except KeyboardInterrupt:
        pass


def _simulate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import asyncio
    import json

    from iotdefender.brokers.external import parse_broker_url
    from iotdefender.simulator.devices import parse_anomaly
    from iotdefender.simulator.runner import Fleet, SimulationSettings

    try:
        broker = parse_broker_url(args.mqtt_url)
        anomalies = [parse_anomaly(a, args.anomaly_start, args.anomaly_stop) for a in args.anomaly]
    except ValueError as error:
        parser.exit(2, f"iotdefender: error: {error}\n")
    settings = SimulationSettings(broker, args.devices, args.interval, args.duration, args.format, args.short_keys,
                                  args.custom_metrics, args.prefix, anomalies)
    fleet = Fleet(settings)
    if args.register_endpoint:
        from iotdefender.simulator.registration import register_things

        register_things(args.register_endpoint, args.region, fleet.things)
    summary = asyncio.run(fleet.run())
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
