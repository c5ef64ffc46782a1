"""Domain errors and their mapping to `google.rpc.Status`.

Service logic raises these and knows nothing of gRPC; the error interceptor turns them into a
status with an `ErrorInfo` (a stable machine-readable reason) and, for bad input, a
`BadRequest` naming every offending field. Envoy renders the same details as the REST body.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

ERROR_DOMAIN = "oih.platform"


class DomainError(Exception):
    """An error the caller caused or can act on. Its message is shown to the caller."""

    code: grpc.StatusCode = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason

    def details(self) -> list[any_pb2.Any]:
        """Rich error details beyond the ErrorInfo."""
        return []

    def to_status(self) -> grpc.Status:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN)
        details = [_pack(info), *self.details()]
        proto = status_pb2.Status(
            code=_CODE_NUMBERS[self.code], message=self.message, details=details
        )
        return rpc_status.to_status(proto)


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


_CODE_NUMBERS = {code: code.value[0] for code in grpc.StatusCode}
assert _CODE_NUMBERS[grpc.StatusCode.INVALID_ARGUMENT] == code_pb2.INVALID_ARGUMENT


class InvalidArgument(DomainError):
    """Bad input: answered with a `BadRequest` naming each field and what is wrong with it."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Iterable[tuple[str, str]], *, reason: str | None = None):
        self.violations = list(violations)
        summary = "; ".join(f"{field}: {text}" for field, text in self.violations)
        super().__init__(f"invalid argument: {summary}", reason=reason)

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([(field, description)])

    def details(self) -> list[any_pb2.Any]:
        request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in self.violations
            ]
        )
        return [_pack(request)]


class NotFound(DomainError):
    """The resource does not exist, or the caller may not know that it exists."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"{kind} {name!r} not found", reason=f"{kind.upper()}_NOT_FOUND")


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(DomainError):
    """The resource is not in a state that allows the call; the message says why."""

    code = grpc.StatusCode.FAILED_PRECONDITION

    def __init__(self, message: str, *, reason: str | None = None, subject: str = "") -> None:
        super().__init__(message, reason=reason)
        self.subject = subject

    def details(self) -> list[any_pb2.Any]:
        violation = error_details_pb2.PreconditionFailure.Violation(
            type=self.reason, subject=self.subject, description=self.message
        )
        return [_pack(error_details_pb2.PreconditionFailure(violations=[violation]))]


class Aborted(DomainError):
    """A concurrent change won (for example a stale etag)."""

    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class Unavailable(DomainError):
    """A dependency (the broker, another service) is not reachable; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DataLoss(DomainError):
    """Stored data cannot be read back (for example a sealed record that does not decrypt)."""

    code = grpc.StatusCode.DATA_LOSS
    default_reason = "DATA_LOSS"


class Unimplemented(DomainError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class ResourceExhausted(DomainError):
    """Too many attempts; `retry_after` seconds tells the caller when to try again."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after: float, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after

    def details(self) -> list[any_pb2.Any]:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(self.retry_after * 1000))
        return [_pack(error_details_pb2.RetryInfo(retry_delay=delay))]
