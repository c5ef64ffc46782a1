"""Which errors a step retries."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

E = TypeVar("E", bound=type[BaseException])


class NonRetryableError(Exception):
    """Raise (a subclass of) this when retrying cannot help, e.g. invalid input."""

    oih_retryable = False


def non_retryable(cls: E) -> E:
    """Class decorator: mark an exception class (and its subclasses) as never retried."""
    cls.oih_retryable = False  # type: ignore[attr-defined]
    return cls


def error_type(exc: BaseException) -> str:
    """The `ErrorEnvelope.error_type` of an exception: its class name."""
    return type(exc).__name__


def is_retryable(exc: BaseException, non_retryable_errors: Iterable[str] = ()) -> bool:
    """False when the exception is marked non-retryable or any class of its MRO is named in
    `non_retryable_errors` (by simple or qualified name), so naming a base class covers its
    subclasses."""
    if getattr(exc, "oih_retryable", True) is False:
        return False
    names = set(non_retryable_errors)
    if not names:
        return True
    for klass in type(exc).__mro__:
        if klass.__name__ in names or f"{klass.__module__}.{klass.__qualname__}" in names:
            return False
    return True
