"""The one dispatch path of the API and the console (controlplane.dispatch), on a real SQLite
database with the real operation registry: validate -> run -> after-change."""

from __future__ import annotations

import ast
import tempfile
from pathlib import Path

import pytest

from iotdefender.contract.errors import ApiError
from iotdefender.contract.service_model import service_model
from iotdefender.controlplane import registry
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.dispatch import Dispatcher
from iotdefender.store.database import create_engine, sqlite_url, upgrade_to_head


@pytest.fixture
def dispatch():
    engine = create_engine(sqlite_url(Path(tempfile.mkdtemp())))
    upgrade_to_head(engine)
    changes: list[str] = []
    dispatcher = Dispatcher(ServiceContext(engine=engine), registry.IMPLEMENTED, lambda: changes.append("changed"))
    yield dispatcher, changes
    engine.dispose()


def test_writes_run_the_after_change_listener_and_reads_do_not(dispatch):
    dispatcher, changes = dispatch
    dispatcher.call_by_name("CreateThing", {"thingName": "t1"})
    assert changes == ["changed"]
    described = dispatcher.call(service_model().operation_model("DescribeThing"), {"thingName": "t1"})
    assert described["thingName"] == "t1"
    assert changes == ["changed"]  # a GET operation changes nothing


def test_invalid_input_is_refused_before_the_handler_runs(dispatch):
    dispatcher, changes = dispatch
    with pytest.raises(ApiError) as refused:
        dispatcher.call_by_name("CreateThing", {"thingName": "x" * 200})  # the model's max is 128
    assert refused.value.code == "InvalidRequestException"
    with pytest.raises(ApiError) as missing:
        dispatcher.call_by_name("DescribeThing", {"thingName": "x" * 200})
    assert missing.value.code == "InvalidRequestException"
    assert changes == []


def test_an_operation_that_checks_constraints_itself_gets_its_input_unchecked(dispatch):
    dispatcher, _ = dispatch
    behavior = {"name": "b", "metric": "aws:num-messages-sent",
                "criteria": {"comparisonOperator": "less-than", "value": {"count": 1},
                             "consecutiveDatapointsToAlarm": 100000}}
    out = dispatcher.call_by_name("ValidateSecurityProfileBehaviors", {"behaviors": [behavior]})
    assert out["valid"] is False and out["validationErrors"]


def test_model_operations_without_an_implementation_answer_not_implemented(dispatch):
    dispatcher, _ = dispatch
    unimplemented = sorted(set(service_model().operation_names) - set(registry.IMPLEMENTED))
    assert unimplemented  # the model has far more operations than Device Defender Detect
    with pytest.raises(ApiError) as refused:
        dispatcher.call_by_name(unimplemented[0], {})
    assert (refused.value.code, refused.value.status) == ("NotImplementedException", 501)


def test_every_implemented_operation_is_a_model_operation():
    assert set(registry.IMPLEMENTED) <= set(service_model().operation_names)


def test_handler_modules_never_import_the_registry():
    """The registry imports the handler modules; one importing it back would be the old cycle."""
    for module in registry.HANDLER_MODULES:
        tree = ast.parse(Path(module.__file__).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        assert not {"iotdefender.controlplane.registry", "iotdefender.controlplane.dispatch"} & imported, module
