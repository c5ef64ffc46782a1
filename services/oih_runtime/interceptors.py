"""Server interceptors: errors and logs, authentication, authorization, input rules.

Each wraps the behaviour of the RPC handler. Order in the server (outermost first):
ErrorInterceptor → AuthenticationInterceptor → AuthorizationInterceptor → ValidationInterceptor.
Handlers therefore never check tokens or permissions themselves and never call
`context.abort`: they raise domain errors.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from oih_runtime import access, db, depth, logs, metrics, principal
from oih_runtime.errors import (
    DomainError,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from oih_runtime.tokens import TokenVerifier
from oih_runtime.validation import check_no_nul, check_required

log = logging.getLogger("oih.rpc")

Behavior = Callable[[Any, grpc.ServicerContext], Any]


def _metadata(context: grpc.ServicerContext, key: str) -> str:
    for name, value in context.invocation_metadata():
        if name == key:
            return value if isinstance(value, str) else value.decode()
    return ""


class _WrappingInterceptor(grpc.ServerInterceptor):  # type: ignore[type-arg]
    """Wraps every handler's behaviour with `around(method, behavior, request, context)`."""

    def around(
        self, method: str, behavior: Behavior, request: Any, context: grpc.ServicerContext
    ) -> Any:
        raise NotImplementedError

    def deserializer(self, deserializer: Any) -> Any:
        """The request deserializer to use (the handler's, unless an interceptor wraps it)."""
        return deserializer

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method = details.method

        def wrap(behavior: Any) -> Behavior:
            return lambda request, context: self.around(method, behavior, request, context)

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap(handler.unary_unary),
                request_deserializer=self.deserializer(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap(handler.unary_stream),
                request_deserializer=self.deserializer(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap(handler.stream_unary),
                request_deserializer=self.deserializer(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            wrap(handler.stream_stream),
            request_deserializer=self.deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


class ErrorInterceptor(_WrappingInterceptor):
    """Request ids, one access log line per call, and domain errors → google.rpc.Status.

    A database that cannot be reached (down, restarting, a broken connection) is UNAVAILABLE
    (HTTP 503): the caller may retry, and nothing is wrong with the request. Anything else
    unexpected becomes INTERNAL with only the request id: the trace goes to the log, never to
    the caller.
    """

    def around(
        self, method: str, behavior: Behavior, request: Any, context: grpc.ServicerContext
    ) -> Any:
        rid = _metadata(context, "x-request-id") or uuid.uuid4().hex
        token = logs.request_id.set(rid)
        # Authentication sets the caller's subject; the principal itself is unbound again
        # before this interceptor's `finally` runs.
        subject_token = logs.subject.set("")
        context.set_trailing_metadata((("x-request-id", rid),))
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            result = behavior(request, context)
            if isinstance(result, Iterator):
                result = list(result)  # server streams are drained here so errors map too
            return result
        except DomainError as error:
            code = error.code
            context.abort_with_status(error.to_status())
        except Exception as error:
            if db.is_unavailable(error):
                unavailable = Unavailable("the database is not reachable right now; try again",
                                          reason="DATABASE_UNAVAILABLE")
                code = unavailable.code
                log.warning("database unavailable in %s: %s", method, _first_line(error))
                context.abort_with_status(unavailable.to_status())
            else:
                code = grpc.StatusCode.INTERNAL
                log.exception("unexpected error in %s", method)
                context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {rid})")
        finally:
            seconds = time.perf_counter() - started
            metrics.observe(method, code.name, seconds)
            log.info(
                "rpc",
                extra={
                    "method": method,
                    "code": code.name,
                    "duration_ms": round(seconds * 1000, 2),
                    "subject": logs.subject.get(),
                },
            )
            logs.subject.reset(subject_token)
            logs.request_id.reset(token)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


#: Metadata by which a platform service acts for the user who called it: the user's own
#: token, verified like any other. Only platform services (holding `all`) may use it.
ON_BEHALF_OF = "x-oih-on-behalf-of"


class AuthenticationInterceptor(_WrappingInterceptor):
    """Verifies the bearer token of every non-public RPC and binds the caller to the context.

    A platform service calling with `x-oih-on-behalf-of: <user token>` is bound as that user,
    so tenant isolation and visibility are judged for the user, not for the service.
    """

    def __init__(self, verifier: TokenVerifier) -> None:
        self.verifier = verifier

    def _delegate(self, service: principal.Principal, user_token: str) -> principal.Principal:
        if service.typ != "service" or not service.is_platform_admin:
            raise PermissionDenied(f"only platform services may send {ON_BEHALF_OF}",
                                   reason="DELEGATION_DENIED")
        return self.verifier.verify(user_token)

    def around(
        self, method: str, behavior: Behavior, request: Any, context: grpc.ServicerContext
    ) -> Any:
        if access.is_open_infrastructure(method):
            return behavior(request, context)
        rule = access.rule_for(method)
        header = _metadata(context, "authorization")
        caller = None
        if rule is None or not rule.public:
            if not header:
                raise Unauthenticated("this call needs an access token (Authorization: Bearer …)")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
            caller = self.verifier.verify(token.strip())
            delegated = _metadata(context, ON_BEHALF_OF)
            if delegated:
                caller = self._delegate(caller, delegated)
            logs.subject.set(caller.subject)
        bound = principal.bind(caller)
        try:
            return behavior(request, context)
        finally:
            principal.unbind(bound)


class AuthorizationInterceptor(_WrappingInterceptor):
    """Enforces the permission the contract declares for the RPC."""

    def around(
        self, method: str, behavior: Behavior, request: Any, context: grpc.ServicerContext
    ) -> Any:
        if access.is_open_infrastructure(method):
            return behavior(request, context)
        rule = access.rule_for(method)
        if rule is None:
            raise PermissionDenied(f"{method} declares no access rule", reason="NO_ACCESS_RULE")
        needed = rule.permission if not rule.public else ""
        if needed and not principal.current().has(needed):
            raise PermissionDenied(
                f"this call needs the permission {needed!r}", reason="MISSING_PERMISSION"
            )
        return behavior(request, context)


class ValidationInterceptor(_WrappingInterceptor):
    """Answers INVALID_ARGUMENT for requests that do not decode (JSON nested too deep), REQUIRED
    fields left unset, strings holding NUL and JSON nested too deep."""

    def deserializer(self, deserializer: Any) -> Any:
        # gRPC answers a request its deserializer refuses with INTERNAL before any interceptor
        # runs; handed on as `Undecodable`, it is refused here as bad input, after the token.
        return depth.lenient(deserializer)

    def around(
        self, method: str, behavior: Behavior, request: Any, context: grpc.ServicerContext
    ) -> Any:
        descriptor = access.method_descriptor(method)
        if isinstance(request, depth.Undecodable):
            if descriptor is None:
                raise InvalidArgument.field("(request)", "the request does not decode")
            raise depth.refuse_undecodable(request, descriptor.input_type)
        if descriptor is not None:
            check_required(request, method.rsplit("/", 1)[-1])
            check_no_nul(request)
            depth.check_json_depth(request)
        return behavior(request, context)


def server_interceptors(verifier: TokenVerifier) -> list[grpc.ServerInterceptor]:  # type: ignore[type-arg]
    return [
        ErrorInterceptor(),
        AuthenticationInterceptor(verifier),
        AuthorizationInterceptor(),
        ValidationInterceptor(),
    ]
