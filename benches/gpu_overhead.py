"""Region overhead on a real GPU host (NVML source live, PyTorch loaded as in training).

Run: ``python benches/gpu_overhead.py LABEL``; prints one JSON line. Run it alternately for two
builds (``PYTHONPATH`` pointing at each) to compare them on the same host.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

try:
    import torch  # type: ignore[import-not-found]  # loaded as in a training job (more objects for the collector)
except ImportError:
    torch = None

import carbonctx

N = 100_000
REPEATS = 5


def main() -> None:
    carbonctx.configure(cpu_backends=[], estimate="never")

    @carbonctx.tracked
    def f() -> None:
        pass

    def plain() -> None:
        pass

    class Empty:
        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: object) -> None:
            return None

    empty = Empty()
    pc = time.perf_counter_ns
    for _ in range(2000):
        with carbonctx.track("x"):
            pass
        f()
    res: dict[str, list[float]] = {}
    for _ in range(REPEATS):
        for kind in ("track", "empty", "tracked", "plain"):
            each = [0] * N
            t_all = pc()
            for i in range(N):
                t = pc()
                if kind == "track":
                    with carbonctx.track("x"):
                        pass
                elif kind == "empty":
                    with empty:
                        pass
                elif kind == "tracked":
                    f()
                else:
                    plain()
                each[i] = pc() - t
            res.setdefault(kind + "_mean", []).append((pc() - t_all) / N)
            res.setdefault(kind + "_median", []).append(statistics.median(each))
    out: dict[str, object] = {k: statistics.median(v) for k, v in res.items()}
    out["label"] = sys.argv[1] if len(sys.argv) > 1 else ""
    out["torch"] = torch is not None
    rt = carbonctx._measure.process.current_runtime()
    out["sources"] = [s["id"] for s in rt.sources] if rt is not None else []
    print(json.dumps(out))


if __name__ == "__main__":
    main()
