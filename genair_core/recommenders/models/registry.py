"""The one error for an unknown backbone or variant name."""

from __future__ import annotations

from collections.abc import Iterable


class UnknownNameError(ValueError):
    def __init__(self, kind: str, name: str, valid: Iterable[str]) -> None:
        super().__init__(f"unknown {kind} {name!r}; valid: {', '.join(valid)}")
