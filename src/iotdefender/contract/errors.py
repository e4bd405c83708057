"""AWS-shaped API errors.

Every failure the API returns is an ``ApiError``: an error code that botocore maps to the modeled
exception class (``client.exceptions.VersionConflictException`` …), the HTTP status the service
model gives that code, and a human message. Statuses are looked up in the model so a code can
never be sent with a status botocore would not expect.

The status is looked up when an error is raised, not at import, so importing this module does not
load the model.
"""

from __future__ import annotations

from typing import Any

from iotdefender.contract.service_model import service_model

# Errors that are not shapes of the iot model but that every AWS REST endpoint answers with
# (authentication happens before any operation is known).
_UNMODELED_STATUS = {
    "UnrecognizedClientException": 403,
    "InvalidSignatureException": 403,
    "MissingAuthenticationTokenException": 403,
    "IncompleteSignatureException": 403,
    "UnknownOperationException": 404,
    "NotImplementedException": 501,
}


def status_for(code: str) -> int:
    """HTTP status of an error code, as the service model declares it."""
    if code in _UNMODELED_STATUS:
        return _UNMODELED_STATUS[code]
    shape = service_model().shape_for(code)
    return int(shape.metadata.get("error", {}).get("httpStatusCode", 400))


class ApiError(Exception):
    """An error answered to the client as ``x-amzn-ErrorType`` + JSON ``{"message": …}``."""

    def __init__(self, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status_for(code)
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"message": self.message, **self.extra}


def invalid_request(message: str) -> ApiError:
    return ApiError("InvalidRequestException", message)


def not_found(message: str) -> ApiError:
    return ApiError("ResourceNotFoundException", message)


def already_exists(message: str, resource_id: str, resource_arn: str) -> ApiError:
    return ApiError(
        "ResourceAlreadyExistsException", message, resourceId=resource_id, resourceArn=resource_arn
    )


def version_conflict(message: str) -> ApiError:
    return ApiError("VersionConflictException", message)


def limit_exceeded(message: str) -> ApiError:
    return ApiError("LimitExceededException", message)
