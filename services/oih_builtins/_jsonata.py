"""Compiled JSONata expressions, cached per expression text (compiling costs more than
evaluating, and a step's config does not change while its worker runs)."""

from __future__ import annotations

from functools import lru_cache

import jsonata


@lru_cache(maxsize=256)
def compiled(expression: str) -> jsonata.Jsonata:
    return jsonata.Jsonata(expression)
