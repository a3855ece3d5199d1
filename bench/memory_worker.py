"""The real ProcessObject handler in a process of its own, driven through every segment of one
object as the state machine would: the memory benchmark's subject (bench/memory.py starts it).

One warm process serves every segment, as one Lambda execution environment would if it stayed
warm: what a segment leaves behind would add up here. Each segment gets the function's timeout
as its time budget. The result file gets one JSON line per segment and a last one with the
process's peak resident memory (VmHWM, see `peak_rss_mb`).

    python -m bench.memory_worker --object '{"id": ...}' --timeout 300 --memory-mb 256 --result FILE
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

HANDLER = Path(__file__).resolve().parents[1] / "functions" / "process_object" / "app.py"


@dataclass
class Context:
    """The parts of Lambda's context object the handler and Powertools read."""

    deadline: float  # time.monotonic() at which the invocation would time out
    memory_limit_in_mb: int
    function_name: str = "sluice-bench-ProcessObject"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:sluice-bench-ProcessObject"
    aws_request_id: str = ""

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.deadline - time.monotonic()) * 1000))


def load_handler() -> ModuleType:
    spec = importlib.util.spec_from_file_location("process_object_app", HANDLER)
    if spec is None or spec.loader is None:
        raise SystemExit(f"no handler at {HANDLER}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def peak_rss_mb(status: Path = Path("/proc/self/status")) -> float:
    """The process's peak resident memory, MB: VmHWM, the high-water mark of its own address space.

    Not `ru_maxrss`: Linux carries the address space's high-water mark over execve into it, and a
    child that Python spawns with vfork has its parent's address space until then: the worker
    reported the bench process's 178 MB while its own peak was 93 MB. Elsewhere (no /proc),
    ru_maxrss is all there is.
    """
    try:
        for line in status.read_text(encoding="ascii").splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--object", required=True, help="the OBJECT of docs/interfaces.md, as JSON")
    parser.add_argument("--timeout", type=float, required=True, help="the function's Timeout, seconds")
    parser.add_argument("--memory-mb", type=int, required=True, help="the function's MemorySize")
    parser.add_argument("--max-segments", type=int, default=200, help="segments at most (a loop guard)")
    parser.add_argument("--result", type=Path, required=True)
    args = parser.parse_args(argv)
    obj: dict[str, Any] = json.loads(args.object)
    app = load_handler()
    segment, done = 0, False
    with args.result.open("a", encoding="utf-8") as result:
        for _ in range(args.max_segments):
            began = time.monotonic()
            context = Context(began + args.timeout, args.memory_mb, aws_request_id=str(uuid.uuid4()))
            answer = app.lambda_handler({"object": obj, "attempt": 1, "segment": segment}, context)
            line = {
                "segment": segment,
                "seconds": round(time.monotonic() - began, 2),
                "rows_total": answer["rows_total"],
                "rows_delivered": answer["rows_delivered"],
                "rows_rejected": answer["rows_rejected"],
                "done": answer["done"],
                "peak_rss_mb": round(peak_rss_mb(), 1),
            }
            result.write(json.dumps(line) + "\n")
            result.flush()
            segment, done = answer["segment"], answer["done"]
            if done:
                break
        final = {"final": True, "done": done, "segments": segment, "peak_rss_mb": round(peak_rss_mb(), 1)}
        result.write(json.dumps(final) + "\n")
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
