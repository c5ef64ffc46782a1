"""The `Component` object and loading one from a `PythonEntryPoint.object_reference`."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, cast

Function = Callable[..., Any]


@dataclass
class ComponentFunction:
    name: str
    kind: Literal["trigger", "action"]
    fn: Function
    description: str = ""
    config_schema: dict[str, Any] | None = None


@dataclass
class Component:
    """A named set of triggers and actions.

    ```
    component = Component("transform")

    @component.action("transform", config_schema={...})
    def transform(message, config, snapshot): ...
    ```
    """

    name: str
    description: str = ""
    version: str = "0.1.0"
    functions: dict[str, ComponentFunction] = field(default_factory=dict)

    def trigger(self, name: str, *, description: str = "",
                config_schema: dict[str, Any] | None = None) -> Callable[[Function], Function]:
        return self._register(name, "trigger", description, config_schema)

    def action(self, name: str, *, description: str = "",
               config_schema: dict[str, Any] | None = None) -> Callable[[Function], Function]:
        return self._register(name, "action", description, config_schema)

    def get(self, name: str) -> Function:
        try:
            return self.functions[name].fn
        except KeyError:
            raise LookupError(f"component {self.name!r} has no function {name!r}") from None

    def _register(self, name: str, kind: Literal["trigger", "action"], description: str,
                  config_schema: dict[str, Any] | None) -> Callable[[Function], Function]:
        def decorate(fn: Function) -> Function:
            if name in self.functions:
                raise ValueError(f"component {self.name!r} already has a function {name!r}")
            doc = description or (fn.__doc__ or "").strip().split("\n")[0]
            self.functions[name] = ComponentFunction(name, kind, fn, doc, config_schema)
            return fn
        return decorate


def load_component(object_reference: str) -> Any:
    """Import `package.module:attr.path` (or `package.module`, meaning its `component`)."""
    module_name, _, attr_path = object_reference.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in (attr_path or "component").split("."):
        obj = getattr(obj, part)
    return obj


def load_function(object_reference: str, function: str) -> Function:
    """The callable named `function` of the component at `object_reference`.

    The object may be a `Component` (or anything with `.get(name)`), or a plain module whose
    attribute of that name is the function (for components written without the SDK class).
    """
    try:
        obj = load_component(object_reference)
    except AttributeError:
        if ":" in object_reference:
            raise
        obj = importlib.import_module(object_reference)
    if hasattr(obj, "get") and callable(obj.get):
        fn = obj.get(function)
    else:
        fn = getattr(obj, function.replace("-", "_"), None)
    if not callable(fn):
        raise LookupError(f"{object_reference} has no function {function!r}")
    return cast(Function, fn)


def takes_credentials(fn: Function) -> bool:
    """Whether `fn` declares a `credentials` parameter (or takes `**kwargs`)."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    return any(p.name == "credentials" or p.kind is inspect.Parameter.VAR_KEYWORD
               for p in parameters)


def call(fn: Function, message: Any, config: dict[str, Any], snapshot: dict[str, Any],
         credentials: dict[str, Any] | None, *, with_credentials: bool | None = None) -> Any:
    """Call a component function, handing `credentials` only to one that asks for them (so
    functions written as `fn(message, config, snapshot)` keep working)."""
    if with_credentials is None:
        with_credentials = takes_credentials(fn)
    if with_credentials:
        return fn(message, config, snapshot, credentials=credentials)
    return fn(message, config, snapshot)
