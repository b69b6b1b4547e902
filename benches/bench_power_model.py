"""An offline model of a power-only source's integral under periodic loads: read-time schemes
compared over a sweep of periods, no sampler involved.

A 5 s region under a 50/250 W square wave (50 % duty, random phase) of every period from 10 to
300 ms in 2 ms steps, 20 runs each; the power is read at the instants a scheme gives and
integrated as the sampler integrates it (golden-ratio slots: each reading holds for its slot;
independent instants: the trapezoid rule). The region's energy is interpolated at its edges
between cumulative points, as the sampler does. Schemes: a fixed 20 ms grid; one read per 20 ms
slot at a golden-ratio-stepped position (the previous sampler); one read at an independent
uniform instant of each slot of 20, 8 (a GPU alone within 0.3 % of a core) and 2 ms (reads
sharing the CPU counters' wake-ups). Run: ``.venv/bin/python benches/bench_power_model.py``.
"""

from __future__ import annotations

import numpy as np

from _common import write_result

GOLDEN = (5**0.5 - 1) / 2
T = 5.0
LOW, HIGH = 50.0, 250.0


def wave(t: np.ndarray, period: float, phase: float) -> np.ndarray:
    return np.where(((t - phase) / period) % 1.0 < 0.5, HIGH, LOW)


def energy(t: float, period: float, phase: float) -> float:
    x = (t - phase) / period
    n = np.floor(x)
    r = x - n
    part = HIGH * r if r < 0.5 else HIGH * 0.5 + LOW * (r - 0.5)
    return float(period * (n * (HIGH + LOW) / 2 + part))


def reads(scheme: str, h: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Read instants and the start of each one's slot, from before the region to after it."""
    k = np.arange(int((T + 0.6) / h))
    slot = -0.3 + rng.uniform(0, h) + k * h
    if scheme == "fixed":
        u = np.zeros(len(k))
    elif scheme == "golden":
        u = (rng.uniform() + k * GOLDEN) % 1.0
    else:
        u = rng.uniform(size=len(k))
    return slot + u * h, slot


def error(scheme: str, h: float, period: float, rng: np.random.Generator) -> float:
    t, slot = reads(scheme, h, rng)
    phase = rng.uniform(0, period)
    w = wave(t, period, phase)
    if scheme == "golden":
        split = np.clip(slot[1:], t[:-1], t[1:])
        inc = w[:-1] * (split - t[:-1]) + w[1:] * (t[1:] - split)
    else:
        inc = 0.5 * (w[1:] + w[:-1]) * np.diff(t)
    cum = np.concatenate([[0.0], np.cumsum(inc)])
    got = np.interp(T, t, cum) - np.interp(0.0, t, cum)
    truth = energy(T, period, phase) - energy(0.0, period, phase)
    return float(got / truth - 1)


SCHEMES = (
    ("fixed 20 ms grid", "fixed", 0.020),
    ("golden-ratio position, 20 ms slots (before)", "golden", 0.020),
    ("independent instant, 20 ms slots", "random", 0.020),
    ("independent instant, 8 ms slots (GPU alone)", "random", 0.008),
    ("independent instant, 2 ms slots (with CPU counters)", "random", 0.002),
)


def main() -> None:
    periods = np.arange(0.010, 0.3001, 0.002)
    rows = []
    for label, scheme, h in SCHEMES:
        rng = np.random.default_rng(7)
        errs = np.array([[error(scheme, h, p, rng) for _ in range(20)] for p in periods]) * 100
        worst = np.abs(errs).max(axis=1)
        long = periods >= 0.0199
        rows.append(
            f"| {label} | {worst.max():.2f} % ({periods[worst.argmax()] * 1000:.0f} ms) "
            f"| {worst[long].max():.2f} % | {np.percentile(np.abs(errs), 99):.2f} % "
            f"| {np.median(np.abs(errs)):.2f} % | {(np.abs(errs) <= 1.0).mean() * 100:.1f} % "
            f"| {np.abs(errs.mean(axis=1)).max():.2f} % |"
        )
    text = f"""# Power-only source: read-time schemes, offline model

A 5 s region under a 50/250 W square wave of every period from 10 to 300 ms (2 ms steps), 20
runs each with random phases; `benches/bench_power_model.py` (no sampler: the read instants and
the integration as the sampler makes them). Worst: the largest error of any run (and its
period); 99th percentile and median of the absolute errors; runs within 1 %; largest mean
error of a period over its 20 runs (a bias would show there).

| scheme | worst | worst, periods ≥ 20 ms | 99th percentile | median | runs within 1 % | largest mean |
| --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}
"""
    print(text)
    write_result("power-model", text)


if __name__ == "__main__":
    main()
