"""Shared command line and timing of the peer drainers (no framework imports)."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any


def parse_args(doc: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--expect", type=int, required=True, help="Stop after this many trades.")
    parser.add_argument("--group", required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--partitions", type=int, default=6)
    return parser.parse_args()


class Meter:
    """Counts processed trades; the clock starts at the first one (start-up and group join excluded)."""

    def __init__(self, expect: int, result: Path, semantics: str) -> None:
        self.expect, self.result, self.semantics = expect, result, semantics
        self.events = 0
        self.outputs = 0
        self.first_s: float | None = None

    def tick(self, outputs: int = 0) -> bool:
        """Account one trade; True once `expect` trades are processed (the result is written then)."""
        if self.first_s is None:
            self.first_s = time.time()
        self.events += 1
        self.outputs += outputs
        if self.events == self.expect:
            self.write()
            return True
        return False

    def write(self) -> None:
        payload: dict[str, Any] = {
            "events": self.events,
            "first_s": self.first_s,
            "last_s": time.time(),
            "first_batch": 1,
            "outputs": self.outputs,
            "semantics": self.semantics,
            "pid": os.getpid(),
        }
        tmp = self.result.with_suffix(".tmp")
        tmp.write_text(json.dumps(payload))
        tmp.replace(self.result)
