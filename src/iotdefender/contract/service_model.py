"""botocore's ``iot`` service model, loaded once: the single contract of the API.

Routes, input locations, shapes, error codes and HTTP statuses are all read from here, so the
server answers exactly what boto3 and the AWS CLI of the pinned botocore version expect.
"""

from __future__ import annotations

import botocore.session
from botocore.model import ServiceModel


def _load() -> ServiceModel:
    return botocore.session.get_session().get_service_model("iot")


SERVICE_MODEL: ServiceModel = _load()
