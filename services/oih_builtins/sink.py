"""`sink`: records every message it receives as a JSON line, so a run can be inspected.

File: `$OIH_DATA_DIR/sinks/<flow_id>/<step_id>.jsonl` (OIH_DATA_DIR defaults to `var`, like the
services' data directory), one `{"id", "execution_id", "data", "metadata"}` per line, flushed per message
(before the worker acks it: a crash repeats lines, never loses them; duplicates have the same
id). Emits nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO

from oih_sdk import Message

from ._meta import builtin

component = builtin("sink", "Records each message as a JSON line in a file.")

_files: dict[Path, TextIO] = {}


def sink_path(flow_id: str, step_id: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    base = Path(data_dir or os.environ.get("OIH_DATA_DIR", "var"))
    return base / "sinks" / flow_id / f"{step_id}.jsonl"


def _file(path: Path) -> TextIO:
    handle = _files.get(path)
    if handle is None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = _files[path] = path.open("a", encoding="utf-8")
    return handle


@component.action("sink", description="Appends {id, execution_id, data, metadata} to a "
                  "JSON-lines file.")
def sink(message: Message, config: dict[str, Any], snapshot: dict[str, Any]) -> None:
    handle = _file(sink_path(message.flow_id, message.step_id))
    handle.write(json.dumps({"id": message.id, "execution_id": message.execution_id,
                             "data": message.data, "metadata": message.metadata},
                            separators=(",", ":")) + "\n")
    handle.flush()
