"""Runs one Lambda handler the way the Lambda runtime does, inside a clean interpreter.

Started as `python -I -S lambda_driver.py SPEC.json` (no site-packages, no PYTHONPATH, no user site):
sys.path is exactly the spec's folders (function code, the merged layers' `python/`, what the runtime
provides) after the standard library. Imports the handler module, invokes it with the spec's event and a
Lambda-like context, and writes the result and every non-stdlib module it loaded (with its file) to
SPEC's `out`. Standard library only: it must not bring anything the bundle lacks.
"""

import importlib
import json
import sys
import sysconfig
import time
import traceback


class Context:
    """The attributes of the Lambda context object that Powertools and the handlers read."""

    def __init__(self, name: str) -> None:
        self.function_name = name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 512
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
        self.aws_request_id = "ship-check-1"
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = "2026/01/01/[$LATEST]ship-check"
        self._deadline = time.monotonic() + 300

    def get_remaining_time_in_millis(self) -> int:
        return int((self._deadline - time.monotonic()) * 1000)


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    sys.path[:0] = spec["path"]
    stdlib = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
    out: dict = {}
    try:
        module = importlib.import_module(spec["module"])
        for name in spec.get("also_import", []):
            importlib.import_module(name)
        out["result"] = getattr(module, spec.get("function", "handler"))(spec["event"], Context(spec["name"]))
    except BaseException as exc:
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc()
    out["modules"] = {
        name: file
        for name, m in list(sys.modules.items())
        if name not in ("__main__", "__mp_main__")
        and (file := getattr(m, "__file__", None))
        and not file.startswith(stdlib)
    }
    with open(spec["out"], "w") as f:
        json.dump(out, f, default=str)


if __name__ == "__main__":
    main()
