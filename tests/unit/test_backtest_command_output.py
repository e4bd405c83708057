"""``iotdefender backtest``'s own output: which URL it could not reach, and no progress lines
when stderr is not a terminal (a stray "0.0%" line came before the result)."""

from __future__ import annotations

import argparse

from iotdefender.backtest import command
from iotdefender.backtest.arguments import add_arguments
from tests.support.processes import free_port

RESULT = {"startTime": 0.0, "endTime": 60.0, "devicesEvaluated": 0, "elapsedSeconds": 0.1, "behaviors": []}


def arguments(*extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--security-profile-name", "p", *extra])


def test_nothing_listening_names_the_url_and_the_option(monkeypatch, capsys):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    url = f"http://127.0.0.1:{free_port()}"
    assert command.run(arguments("--endpoint-url", url)) == 2
    err = capsys.readouterr().err
    assert url in err and "--endpoint-url" in err and err.count("\n") == 1, err


def test_the_default_endpoint_is_named_too(monkeypatch, capsys):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")

    class Refusing:
        def __init__(self, *args: object) -> None:
            pass

        def call(self, *args: object) -> None:
            raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(command, "ExtensionClient", Refusing)
    assert command.run(arguments()) == 2
    assert "http://127.0.0.1:8080" in capsys.readouterr().err


def test_no_progress_lines_when_stderr_is_not_a_terminal(monkeypatch, capsys):
    answers = iter([{"backtestId": "b", "status": "QUEUED", "progress": 0.0, "message": "queued"},
                    {"backtestId": "b", "status": "RUNNING", "progress": 0.5, "message": "half"},
                    {"backtestId": "b", "status": "SUCCEEDED", "progress": 1.0, "message": "", "result": RESULT}])

    class Client:
        def __init__(self, *args: object) -> None:
            pass

        def call(self, *args: object) -> dict:
            return next(answers)

    monkeypatch.setattr(command, "ExtensionClient", Client)
    monkeypatch.setattr(command.time, "sleep", lambda seconds: None)
    assert command.run(arguments()) == 0
    captured = capsys.readouterr()
    assert captured.err == "" and captured.out.startswith("backtest ")
