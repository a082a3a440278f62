"""Triggers declared through pgtrigger that execute the project's own SQL functions."""

from __future__ import annotations

from typing import Any

import pgtrigger
from django.db import models


class SqlFunctionTrigger(pgtrigger.Trigger):
    """A trigger, declared and installed through pgtrigger, that executes a function
    of the project's SQL files rather than one pgtrigger writes.

    The function decides for itself whether pgtrigger.ignore() applies to it (the
    ledger's apply function never steps aside; the projection's guard does).
    pgtrigger still writes a function of its own for the trigger's name; it only
    returns, and nothing calls it.
    """

    func = "RETURN NULL;"

    def __init__(self, *, function: str, **kwargs: Any) -> None:
        self.function = function
        super().__init__(**kwargs)

    def render_execute(self, model: models.Model) -> str:
        return f"{self.function}()"
