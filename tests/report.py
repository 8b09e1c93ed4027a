"""Figures for docs/reliability.md. Tests call record(); the figures go to
the JSON-lines file named by RESV_RELIABILITY_REPORT (set by
`make reliability`), and nowhere otherwise."""

from __future__ import annotations

import json
import os


def record(test: str, **figures: int | str) -> None:
    path = os.environ.get("RESV_RELIABILITY_REPORT")
    if not path:
        return
    with open(path, "a") as out:
        out.write(json.dumps({"test": test, **figures}) + "\n")
