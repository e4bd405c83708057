"""botocore's ``iot`` service model, loaded once: the single contract of the API.

Routes, input locations, shapes, error codes and HTTP statuses are all read from here, so the
server answers exactly what boto3 and the AWS CLI of the pinned botocore version expect.

Loaded on first use, not at import: storage, the engine and the detection worker import this
package's errors without paying for (or holding) the parsed model, which only the API and the
control plane's validation read.
"""

from __future__ import annotations

import functools
import os

from botocore.loaders import create_loader
from botocore.model import ServiceModel


@functools.cache
def service_model() -> ServiceModel:
    """The pinned botocore's ``iot`` model, parsed on the first call and shared afterwards.

    Read with botocore's loader, as ``Session.get_service_model`` reads it (``AWS_DATA_PATH``
    included), without the session: importing ``botocore.session`` imports the client machinery
    too (``botocore.client``, its waiters and docs, urllib3), ~0.06 s of every start, which the
    server never uses.
    """
    loader = create_loader(os.environ.get("AWS_DATA_PATH"))
    return ServiceModel(loader.load_service_model("iot", "service-2"), service_name="iot")
