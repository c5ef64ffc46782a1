"""`http-poll`: a polling trigger. On each tick (a scheduler execution's message) it fetches a
URL that answers a JSON list of items and emits only the items newer than the position kept in
its snapshot, then advances the snapshot to the newest item's position.

Config: `url` (required), `items` (the key of the list in the JSON answer; default: the answer
itself when it is a list, else its `items`), `position_field` (default `id`: an increasing
number or string, such as an id or an ISO-8601 timestamp), `headers`, `timeout` (seconds,
default 30), `max_items` (at most this many per tick, oldest first; the rest follow on the
next ticks; default 1000).

Snapshot: `{"position": <the newest emitted item's position>}`; without one every item is new.
Emits each new item as an output's data, oldest first. A failed fetch emits nothing and keeps
the position, so the step's retry policy (or the next tick) polls again from the same place.
Fetching goes through `oih_sdk.egress` (`fetch_json`), which refuses internal addresses.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

from oih_sdk import Message, NonRetryableError, Snapshot, egress

from ._meta import builtin

component = builtin("http-poll", "Polls a URL for new items, remembering where it stopped.")

SCHEMA = {
    "type": "object", "required": ["url"],
    "properties": {
        "url": {"type": "string"},
        "items": {"type": "string"},
        "position_field": {"type": "string"},
        "headers": {"type": "object", "additionalProperties": {"type": "string"}},
        "timeout": {"type": "number", "minimum": 0},
        "max_items": {"type": "integer", "minimum": 1},
    },
}


class PollError(Exception):
    """The URL answered with an error status (retried)."""


def fetch_json(url: str, headers: dict[str, str], timeout: float) -> Any:
    """GET `url` and parse its JSON answer, through the egress guard."""
    if not url.startswith(("http://", "https://")):
        raise NonRetryableError(f"unsupported URL scheme in {url!r}")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url, method="GET", headers={"accept": "application/json", **headers})
    try:
        with egress.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as error:
        error.close()
        raise PollError(f"HTTP {error.code} from {url}") from None
    try:
        return json.loads(raw)
    except ValueError:
        raise NonRetryableError(f"{url} did not answer JSON") from None


def _items(answer: Any, key: str) -> list[dict[str, Any]]:
    found = answer if isinstance(answer, list) and not key else (
        answer.get(key or "items") if isinstance(answer, dict) else None)
    if not isinstance(found, list) or not all(isinstance(i, dict) for i in found):
        raise NonRetryableError(f"the answer has no list of objects at {key or 'items'!r}")
    return found


def _position(item: dict[str, Any], field: str) -> Any:
    value = item.get(field)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise NonRetryableError(f"item without a number or string {field!r}: {item!r}")
    return value


@component.trigger("poll", description="Emits the items newer than the last poll.",
                   config_schema=SCHEMA)
def poll(message: Message, config: dict[str, Any], snapshot: dict[str, Any]
         ) -> Iterator[dict[str, Any] | Snapshot]:
    field = str(config.get("position_field") or "id")
    answer = fetch_json(str(config["url"]), dict(config.get("headers") or {}),
                        float(config.get("timeout", 30)))
    last = snapshot.get("position")
    positioned = [(_position(item, field), item) for item in _items(answer, str(
        config.get("items") or ""))]
    try:
        newer = sorted((p for p in positioned if last is None or p[0] > last),
                       key=lambda pair: pair[0])
    except TypeError:
        raise NonRetryableError(f"positions of {field!r} are not comparable") from None
    newer = newer[:int(config.get("max_items", 1000))]
    for _, item in newer:
        yield item
    if newer:
        yield Snapshot({"position": newer[-1][0]})
