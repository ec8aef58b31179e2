"""Reading the generated locks (`requirements.txt`, `layers/requirements*.txt`): pins with their markers
and hash lines, as pip reads them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from packaging.markers import Marker
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
LOCK = REPO_ROOT / "requirements.txt"
LAYER_LOCKS = (REPO_ROOT / "layers" / "requirements.txt", REPO_ROOT / "layers" / "requirements-arrow.txt")
_PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9_.\[\],-]+)==(?P<version>[^\s;\\]+)\s*(?:;\s*(?P<marker>[^\\]+?))?\s*\\?$"
)


@dataclass(frozen=True)
class Pin:
    """One locked requirement: `name==version ; marker` and its `--hash` options."""

    name: str
    version: str
    marker: str | None
    hashes: tuple[str, ...]

    def applies(self, python_full_version: str) -> bool:
        """Whether pip installs this pin on Linux x86_64 with this Python."""
        if self.marker is None:
            return True
        env = {
            "python_full_version": python_full_version,
            "python_version": ".".join(python_full_version.split(".")[:2]),
            "sys_platform": "linux",
            "platform_system": "Linux",
            "platform_machine": "x86_64",
            "os_name": "posix",
            "implementation_name": "cpython",
            "platform_python_implementation": "CPython",
        }
        return Marker(self.marker).evaluate(env)

    def requirement_text(self) -> str:
        """The pin as a requirements-file entry (pip's hash-checking mode)."""
        marker = f" ; {self.marker}" if self.marker else ""
        return f"{self.name}=={self.version}{marker} " + " ".join(f"--hash={h}" for h in self.hashes)


def read_lock(path: Path) -> list[Pin]:
    """The pins of a lock; raises on a requirement line that is not `name==version`."""
    pins: list[Pin] = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("--hash="):
            assert pins, f"{path}: hash before any requirement"
            last = pins[-1]
            pins[-1] = Pin(
                last.name, last.version, last.marker, (*last.hashes, line.split("=", 1)[1].rstrip(" \\"))
            )
            continue
        match = _PIN.match(line)
        assert match, f"{path}: not an exact pin: {line!r}"
        name = canonicalize_name(match["name"].split("[")[0])
        pins.append(Pin(name, match["version"], (match["marker"] or "").strip() or None, ()))
    return pins


def pins_for(path: Path, python_full_version: str) -> dict[str, Pin]:
    """name → the pin pip installs with this Python (markers evaluated); one per name."""
    out: dict[str, Pin] = {}
    for pin in read_lock(path):
        if pin.applies(python_full_version):
            assert pin.name not in out, f"{path}: {pin.name} pinned twice for Python {python_full_version}"
            out[pin.name] = pin
    return out
