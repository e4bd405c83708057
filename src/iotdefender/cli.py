"""The ``iotdefender`` command line."""

from __future__ import annotations

import argparse
import sys

from iotdefender import __version__
from iotdefender.logging_setup import configure_logging
from iotdefender.settings import add_serve_arguments, settings_from


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iotdefender", description="Self-hosted AWS IoT Device Defender Detect")
    parser.add_argument("--version", action="version", version=f"iotdefender {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the service (API, storage) with embedded defaults")
    add_serve_arguments(serve)
    args = parser.parse_args(argv)

    if args.command == "serve":
        from iotdefender.service import ConfigurationError, run

        settings = settings_from(args)
        configure_logging(settings.log_format)
        try:
            run(settings)
        except (ConfigurationError, FileNotFoundError) as error:
            parser.exit(2, f"iotdefender: error: {error}\n")
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
