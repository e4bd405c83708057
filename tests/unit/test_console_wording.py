"""The behavior sentences say when a device alarms: the opposite of the criterion's 'normal'."""

from __future__ import annotations

import pytest

from iotdefender.console.wording import alarm_sentence


@pytest.mark.parametrize(("behavior", "expected"), [
    ({"name": "t", "metric": "temperature", "criteria": {"comparisonOperator": "less-than-equals",
                                                         "value": {"number": 70},
                                                         "consecutiveDatapointsToAlarm": 2}},
     "alarms when temperature is above 70 for 2 consecutive datapoints"),
    ({"name": "p", "metric": "aws:listening-tcp-ports", "criteria": {"comparisonOperator": "in-port-set",
                                                                     "value": {"ports": [22, 443]}}},
     "alarms when aws:listening-tcp-ports includes a port outside 22 443"),
    ({"name": "b", "metric": "aws:all-bytes-out", "criteria": {
        "comparisonOperator": "less-than", "durationSeconds": 300, "statisticalThreshold": {"statistic": "p90"},
        "consecutiveDatapointsToClear": 3}},
     "alarms when aws:all-bytes-out summed over 300 s is the fleet's p90 of the previous 300 s or more; "
     "it clears after 3 normal datapoints"),
    # Not a count of bytes or packets: judged on its latest value, durationSeconds is the percentile's window.
    ({"name": "c", "metric": "aws:num-established-tcp-connections", "criteria": {
        "comparisonOperator": "less-than-equals", "durationSeconds": 300, "statisticalThreshold": {"statistic": "p90"}}},
     "alarms when aws:num-established-tcp-connections is above the fleet's p90 of the previous 300 s"),
    ({"name": "s", "metric": "aws:message-byte-size", "criteria": {
        "comparisonOperator": "less-than", "durationSeconds": 600, "value": {"count": 1024}}},
     "alarms when aws:message-byte-size (the largest in 600 s) is 1024 or more"),
    ({"name": "s", "metric": "aws:message-byte-size", "criteria": {
        "comparisonOperator": "greater-than-equals", "durationSeconds": 600, "value": {"count": 5}}},
     "alarms when aws:message-byte-size (the smallest in 600 s) is below 5"),
    ({"name": "m", "metric": "aws:num-messages-sent", "criteria": {"mlDetectionConfig": {"confidenceLevel": "HIGH"}},
      "suppressAlerts": True},
     "alarms when the ML model finds aws:num-messages-sent anomalous with HIGH confidence (alerts suppressed)"),
    ({"name": "r", "metric": "aws:num-authorization-failures"},
     "retains aws:num-authorization-failures without alarming (no criteria)"),
    ({"name": "d", "metric": "aws:num-messages-received", "metricDimension": {"dimensionName": "topics"},
      "criteria": {"comparisonOperator": "greater-than-equals", "value": {"count": 1}}},
     "alarms when aws:num-messages-received (in dimension topics) is below 1"),
])
def test_alarm_sentence(behavior, expected):
    assert alarm_sentence(behavior) == expected


def test_counts_in_sentences_agree_with_their_number() -> None:
    from iotdefender.english import count_of

    assert [count_of(n, "device") for n in (0, 1, 2)] == ["0 devices", "1 device", "2 devices"]


def test_an_ml_models_status_in_words():
    from iotdefender.console.wording import model_status

    assert model_status({"modelStatus": "PENDING_BUILD", "datapointsCollectionPercentage": 0.0}) == \
        "learning: 0 % collected; it alarms once built"
    assert model_status({"modelStatus": "PENDING_BUILD", "datapointsCollectionPercentage": 42.5,
                         "trainingDataCollectionStartDate": 0.0}) == \
        "learning: 42.5 % collected since 1970-01-01 00:00:00 UTC; it alarms once built"
    assert "no longer alarms" in model_status({"modelStatus": "EXPIRED", "lastModelRefreshDate": 60.0})
