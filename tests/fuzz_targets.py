"""Fuzz targets (issue 10): the JSON Lines reader behind ``carbonctx report``, and the settings
parser behind ``configure()`` and the ``CARBONCTX_*`` variables.

Each target takes bytes and checks what must hold for any input; a broken rule raises
AssertionError, and any exception the target does not allow is a finding. Two engines drive
them: atheris (coverage-guided, ``python tests/fuzz_targets.py jsonl|settings [libFuzzer
options]``, where atheris is installed) and :func:`mutate_loop`, a seeded mutation loop over
the committed corpus (``tests/fuzz_corpus/<target>/``) that ``tests/test_fuzz.py`` runs for a
bounded number of inputs in the test command.
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

CORPUS = Path(__file__).resolve().parent / "fuzz_corpus"


def _load() -> None:
    """Import what the targets exercise (under atheris, inside its instrumentation of
    carbonctx alone: instrumenting every loaded module takes minutes)."""
    global _config, terminal_safe, csv_text, dumps, read_jsonl_checked, chrome_trace
    global format_stats, stats_from_records, ConfigurationError, FIELDS
    global read_run_log, format_runs, render_report, merge_jobs
    import attrs

    from carbonctx import _config
    from carbonctx._cli.report import terminal_safe
    from carbonctx._output.csv import csv_text
    from carbonctx._output.html import render_report
    from carbonctx._output.jsonl import dumps, read_jsonl_checked
    from carbonctx._output.text import format_runs
    from carbonctx._output.trace import chrome_trace
    from carbonctx._results.statistics import format_stats, stats_from_records
    from carbonctx._runs.log import read_run_log
    from carbonctx._runs.merge import merge_jobs
    from carbonctx.errors import ConfigurationError

    FIELDS = tuple(f.name for f in attrs.fields(_config.Settings))


# --------------------------------------------------------------------------- JSON Lines


class JsonlTarget:
    """Reads the bytes as a file the way ``carbonctx report`` does, through every output, and
    as a run log the way ``carbonctx report DIR`` does."""

    def __init__(self) -> None:
        fd, name = tempfile.mkstemp(prefix="carbonctx-fuzz-", suffix=".jsonl")
        os.close(fd)
        self.path = Path(name)

    def close(self) -> None:
        self.path.unlink(missing_ok=True)

    def __call__(self, data: bytes) -> None:
        self.path.write_bytes(data)
        regions, power, skipped = read_jsonl_checked(self.path)
        lines = data.count(b"\n") + (0 if data.endswith(b"\n") or not data else 1)
        assert len(regions) + len(power) + skipped.total <= max(lines, 1) + skipped.total
        for r in regions:
            assert isinstance(r["name"], str) and r["name"]
            assert isinstance(r["start"], (int, float)) and math.isfinite(r["start"])
        text = terminal_safe(format_stats(stats_from_records(regions).values()))
        text += "".join(terminal_safe(ln) for ln in skipped.lines())
        assert not any((ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) < 0xA0 for c in text)
        trace = dumps(chrome_trace(regions, power))
        json.loads(trace, parse_constant=_refuse)  # what a browser's JSON.parse reads
        csv_text(regions)
        # The same bytes as an epochs() run log, through `report DIR`'s summaries.
        run = read_run_log(self.path)
        if run is not None:
            format_runs([run])
            render_report([run])
            for job in merge_jobs([run]):
                job.lines()


def _refuse(token: str) -> Any:
    raise AssertionError(f"{token} written")


# --------------------------------------------------------------------------- settings


class Bytes:
    """Values drawn from fuzzer bytes (zeros once they run out)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.i = 0

    def take(self, n: int) -> bytes:
        out = self.data[self.i : self.i + n]
        self.i += n
        return out.ljust(n, b"\0")

    def byte(self) -> int:
        return self.take(1)[0]

    def pick(self, options: tuple[Any, ...]) -> Any:
        return options[self.byte() % len(options)]

    def text(self) -> str:
        return self.take(self.byte() % 24).decode("utf-8", "replace")

    def value(self, depth: int = 0) -> Any:
        kind = self.byte() % (10 if depth < 2 else 7)
        if kind == 0:
            return None
        if kind == 1:
            return bool(self.byte() & 1)
        if kind == 2:
            return struct.unpack("<q", self.take(8))[0] >> (self.byte() % 64)
        if kind == 3:
            return struct.unpack("<d", self.take(8))[0]
        if kind in (4, 5):
            return self.pick(WORDS) if kind == 4 else self.text()
        if kind == 6:
            return self.take(self.byte() % 8)
        if kind == 7:
            return [self.value(depth + 1) for _ in range(self.byte() % 4)]
        if kind == 8:
            return tuple(self.value(depth + 1) for _ in range(self.byte() % 4))
        return {self.pick(WORDS): self.value(depth + 1) for _ in range(self.byte() % 4)}


#: Words the settings know, so that mutations reach past the first check.
WORDS = (
    "powercap",
    "perf",
    "msr",
    "nvml",
    "estimate",
    "auto",
    "never",
    "always",
    "restart",
    "disable",
    "gb",
    "dk",
    "electricitymaps",
    "DE",
    "GB",
    "world",
    "average",
    "marginal",
    "v3",
    "1",
    "0",
    "yes",
    "no",
    "0.5",
    "100",
    "nan",
    "-1",
    "http://127.0.0.1:9",
    "out-{rank}.jsonl",
    "out-{pid}.jsonl",
    "powercap=5,nvml=20",
    "GPU-5f1c",
    "0,1",
    "",
)
ENV_VARIABLES = (
    "CARBONCTX_CPU_BACKENDS",
    "CARBONCTX_GPU",
    "CARBONCTX_ESTIMATE",
    "CARBONCTX_INTERVALS",
    "CARBONCTX_OUTPUT",
    "CARBONCTX_STRICT",
    "CARBONCTX_SUMMARY",
    "CARBONCTX_ON_FORK",
    "CARBONCTX_RANK",
    "CARBONCTX_WORLD_SIZE",
    "CARBONCTX_GPUS",
    "CARBONCTX_CPU_TDP_W",
    "CARBONCTX_NODE_SAMPLER",
    "CARBONCTX_PUE",
    "CARBONCTX_PROVIDERS",
    "CARBONCTX_SIGNAL",
    "CARBONCTX_INTENSITY_DEADLINE",
    "CARBONCTX_LATITUDE",
    "CARBONCTX_LONGITUDE",
    "CARBONCTX_GB_URL",
    "CARBONCTX_ELECTRICITYMAPS_TOKEN",
    "CARBONCTX_WATTTIME_REGION",
)


def settings_input(data: bytes) -> tuple[dict[str, Any], dict[str, str]]:
    """The ``configure()`` keywords and the environment a fuzzer's bytes stand for."""
    b = Bytes(data)
    overrides: dict[str, Any] = {}
    for _ in range(b.byte() % 6):
        overrides[b.pick(FIELDS)] = b.value()
    env = {b.pick(ENV_VARIABLES): b.pick(WORDS) if b.byte() & 1 else b.text() for _ in range(3)}
    env = {k: v for k, v in env.items() if "\0" not in v}
    return overrides, env


def settings_target(data: bytes) -> None:
    """``configure()``'s parser: settings come out, or a ConfigurationError saying why."""
    overrides, env = settings_input(data)
    # As configure() hands them on: None means "not given"; the TDP goes down as text.
    given = {k: v for k, v in overrides.items() if v is not None}
    if "cpu_tdp_w" in given:
        given["cpu_tdp_w"] = str(given["cpu_tdp_w"])
    try:
        s = _config.build(None, given, env=env)
    except ConfigurationError as e:
        assert str(e)
        return
    assert isinstance(s, _config.Settings)
    assert isinstance(s.strict, bool) and isinstance(s.gpu, bool)
    assert all(isinstance(b, str) for b in s.cpu_backends)
    assert s.output is None or isinstance(s.output, str)
    for v in s.intervals.values():
        assert 0 < v <= _config.MAX_INTERVAL_S


# --------------------------------------------------------------------------- engines


def corpus(name: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted((CORPUS / name).iterdir()) if p.is_file()]


def _mutations(seeds: list[bytes], rng: random.Random) -> Iterator[bytes]:
    """Inputs from the corpus by byte flips, splices, repeats, cuts and token insertions."""
    tokens = [b"NaN", b"1e999", b"-", b'"', b"\\u0000", b"\xff", b"\n", b"[[[[", b"{}", b"\x1b"]
    while True:
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            op = rng.randrange(6)
            at = rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(at, len(data) - 1)] = rng.randrange(256)
            elif op == 1:
                data[at:at] = rng.choice(tokens)
            elif op == 2:
                del data[at : at + rng.randint(1, 16)]
            elif op == 3:
                other = rng.choice(seeds)
                data[at:] = other[rng.randrange(len(other) + 1) :]
            elif op == 4 and data:
                chunk = data[at : at + rng.randint(1, 32)]
                data[at:at] = chunk * rng.randint(1, 8)
            else:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        yield bytes(data)


def mutate_loop(
    target: Callable[[bytes], None], seeds: list[bytes], runs: int, seed: int = 0
) -> int:
    """Run ``target`` on every seed, then on ``runs`` mutations of them (seeded: the same
    inputs each time). A failure raises, with the input that caused it in the message."""
    rng = random.Random(seed)
    inputs = iter(seeds)
    mutations = _mutations(seeds, rng)
    n = 0
    for data in [*inputs, *(next(mutations) for _ in range(runs))]:
        try:
            target(data)
        except Exception as e:
            raise AssertionError(f"{type(e).__name__}: {e} on input {data!r}") from e
        n += 1
    return n


def main(argv: list[str]) -> None:  # pragma: no cover - run by hand or by the test, in a child
    import atheris

    with atheris.instrument_imports(include=["carbonctx"]):
        _load()
    name = argv[1]
    target: Callable[[bytes], None]
    if name == "jsonl":
        target = JsonlTarget()
    elif name == "settings":
        target = settings_target
    else:
        raise SystemExit("usage: fuzz_targets.py jsonl|settings [libFuzzer options]")
    options = argv[2:]
    if not any(not a.startswith("-") for a in options):
        # New inputs go to a scratch folder (the first); the committed corpus is read only.
        options += [tempfile.mkdtemp(prefix=f"carbonctx-fuzz-{name}-"), str(CORPUS / name)]
    atheris.Setup([argv[0], *options], target)
    t = time.monotonic()
    atheris.Fuzz()
    print(f"fuzzed for {time.monotonic() - t:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
else:
    _load()
