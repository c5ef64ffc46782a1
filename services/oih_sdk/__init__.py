"""The component SDK: how a component's triggers and actions are written.

A component is a Python object (usually `component = Component("name")` in a module) whose
functions are plain callables `fn(message, config, snapshot)`:

- `message` is a `Message` (data, metadata, attachments, passthrough, and the ids of the flow,
  step, execution and message, the attempt and the trace);
- `config` is the step's configuration (the node's `fields`, a dict);
- `snapshot` is the step's last snapshot (a dict, empty at first).

A function that also declares a `credentials` parameter (`fn(message, config, snapshot, *,
credentials)`) receives the step's resolved secret as that argument: the JSON object of the
node's `credentials` secret (`{"api_key": …}`, `{"username", "password"}`, `{"token"}`,
`{"key"}` or free JSON), or None when the node names none. It is never merged into `config`, so
a component that logs its configuration does not leak it; do not log or emit it.

A function emits by returning (or yielding) any mix of:
- nothing (`None`): no output;
- a `dict`: the `data` of one output (metadata and attachments are inherited from the input);
- a `Message`: one output as given (its id is ignored; the runtime assigns a deterministic one);
- a list, tuple or generator of the above;
- a `Snapshot({...})`: the step's new snapshot (the last one emitted wins); kept across runs,
  or only for this execution with `Snapshot({...}, execution=True)`.
- a `Reply(status, headers, body)`: the HTTP answer of a synchronous webhook request.

It signals an error by raising. Errors are retried by the step's RetryPolicy unless the
exception is non-retryable: a subclass of `NonRetryableError`, a class decorated with
`@non_retryable`, or named (class name, in its MRO) in `RetryPolicy.non_retryable_errors`.
"""

from __future__ import annotations

from .component import (
    Component,
    ComponentFunction,
    call,
    load_component,
    load_function,
    takes_credentials,
)
from .errors import NonRetryableError, is_retryable, non_retryable
from .message import Message, Reply, Snapshot

__all__ = [
    "Component",
    "ComponentFunction",
    "Message",
    "NonRetryableError",
    "Reply",
    "Snapshot",
    "call",
    "is_retryable",
    "load_component",
    "load_function",
    "non_retryable",
    "takes_credentials",
]
