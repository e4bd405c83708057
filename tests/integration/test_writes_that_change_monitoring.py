"""Only the writes that change what detection reads drop the control plane's caches and wake the
invalidation sweep: the console's behavior builder validates as an operator types, and a bulk
verification writes a hundred at once, each of which swept every alarm under the detection lock."""

from __future__ import annotations

from iotdefender.api.app import ApiService
from iotdefender.api.credentials import CredentialStore
from iotdefender.controlplane.context import ServiceContext
from iotdefender.controlplane.registry import IMPLEMENTED
from tests.integration.test_cloud_isolation import cloud_metrics

BEHAVIOR = {"name": "ports", "metric": "aws:num-listening-tcp-ports",
            "criteria": {"comparisonOperator": "less-than", "value": {"count": 5}}}


def test_validating_tagging_and_verifying_change_nothing_detection_reads(tmp_path):
    now = [1000.2]
    service, _, cloud = cloud_metrics(tmp_path, lambda store: store, lambda: now[0])
    cloud.connect_attempt("c-1", "10.0.0.1", True)
    now[0] = 1001.5
    assert cloud.close_due() == 1  # 1 attempt where the profile says normal is over 100: a violation
    (violation,) = service.invoke("ListActiveViolations", {})["activeViolations"]
    engine = service.context.engine
    changes: list[str] = []
    api = ApiService(ServiceContext(engine=engine, region="us-east-1", account_id="123456789012"),
                     CredentialStore([]), on_change=(lambda: changes.append("changed"),))

    def changed(operation: str, params: dict) -> bool:
        before = len(changes)
        api.invoke(operation, params)
        return len(changes) > before

    assert changed("CreateSecurityProfile", {"securityProfileName": "p", "behaviors": [BEHAVIOR]})
    arn = api.invoke("DescribeSecurityProfile", {"securityProfileName": "p"})["securityProfileArn"]
    assert changed("CreateThing", {"thingName": "t"})
    assert not changed("ValidateSecurityProfileBehaviors", {"behaviors": [BEHAVIOR]})
    assert not changed("TagResource", {"resourceArn": arn, "tags": [{"Key": "team", "Value": "ops"}]})
    assert not changed("UntagResource", {"resourceArn": arn, "tagKeys": ["team"]})
    assert not changed("PutVerificationStateOnViolation", {"violationId": violation["violationId"],
                                                           "verificationState": "BENIGN_POSITIVE"})
    assert changes == ["changed", "changed"]
    assert changed("UpdateSecurityProfile", {"securityProfileName": "p", "behaviors": []})
    # Mitigation actions and tasks change nothing detection reads when called: a task's runner
    # drops the caches itself once it has added things to groups (controlplane/mitigation_execution.py).
    # Certificates are the broker's (brokers/certificate_gate.py follows their writes on its own).
    assert {name for name, implementation in IMPLEMENTED.items() if not implementation.changes_monitoring} == {
        "ValidateSecurityProfileBehaviors", "TagResource", "UntagResource", "PutVerificationStateOnViolation",
        "CreateMitigationAction", "UpdateMitigationAction", "DeleteMitigationAction",
        "StartDetectMitigationActionsTask", "CancelDetectMitigationActionsTask",
        "RegisterCertificate", "RegisterCertificateWithoutCA", "UpdateCertificate", "DeleteCertificate",
        "AttachThingPrincipal", "DetachThingPrincipal", "CreateKeysAndCertificate", "CreateCertificateFromCsr"}
