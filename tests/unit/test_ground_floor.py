"""The lower floors stay light: storage and the engine do not pull in the AWS wire contract.

Each import runs in a fresh interpreter, so what another test already imported cannot hide a
dependency.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _loaded_after(statement: str) -> list[str]:
    script = f"import sys; {statement}; import json; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("package", ["iotdefender.store", "iotdefender.engine"])
def test_storage_and_engine_do_not_load_the_wire_contract(package):
    statement = "; ".join(f"import {package}.{module}" for module in _modules_of(package))
    loaded = _loaded_after(statement)
    assert [m for m in loaded if m == "botocore" or m.startswith("botocore.")] == []
    assert [m for m in loaded if m.startswith(("iotdefender.api", "iotdefender.contract"))] == []


def test_contract_errors_do_not_parse_the_service_model_at_import():
    script = ("from iotdefender.contract import errors; from iotdefender.contract.service_model import service_model; "
              "print(service_model.cache_info().misses); errors.invalid_request('x'); "
              "print(service_model.cache_info().misses)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60)
    # not parsed by the import; parsed once when an error needs its HTTP status
    assert done.stdout.split() == ["0", "1"]


def _modules_of(package: str) -> list[str]:
    import pkgutil
    import importlib.util

    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations is not None
    return sorted(m.name for m in pkgutil.iter_modules(spec.submodule_search_locations)
                  if m.name != "migrations")
