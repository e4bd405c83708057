"""Figures that docs/durability.md publishes, as the durability tests measure them."""

from __future__ import annotations

import json
import os


def publish_figures(name: str, figures: dict[str, object]) -> None:
    """Printed (pytest -s) and, with IOTDEFENDER_DURABILITY_OUT set, appended to that JSON-lines file
    (``make durability``)."""
    line = json.dumps({"test": name, **figures})
    print(line)
    out = os.environ.get("IOTDEFENDER_DURABILITY_OUT")
    if out:
        with open(out, "a") as f:
            f.write(line + "\n")
