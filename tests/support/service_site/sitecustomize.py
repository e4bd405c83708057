"""Loaded at the start of every ``iotdefender serve`` that ``ServiceProcess`` launches (its
``PYTHONPATH``, ``tests/support/processes.py``; the few tests that run the command line themselves
do without it): it hides the packages that only the test extra installs and that
the service's libraries import on their own when they find them, so that the service runs with what
``make run`` installs, as a user's does.

- ``rich`` (import-linter's) and ``pygments`` (rich's and pytest's): structlog's console renderer
  and mako (alembic's templates) import them when present; the service logs JSON and renders no
  template.
- ``awscrt`` (the AWS Device Defender agent's, run by its own test): botocore imports it when
  present (``botocore.compat``), and signs and sends without it.

Importing them cost each service process about 0.3 CPU-seconds at start, which the suite paid a few
hundred times.
"""

import sys

for _package in ("rich", "pygments", "awscrt"):
    sys.modules.setdefault(_package, None)  # type: ignore[assignment]  # import fails: ModuleNotFoundError
