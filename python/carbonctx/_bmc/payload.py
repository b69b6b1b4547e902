"""Reading Redfish documents: links, collection members, ``Status.State``, readings (a
number, or one sent as a string; never null, text, NaN or a negative number), and times
(``DateTimeOffset``: ISO 8601 with a UTC offset)."""

from __future__ import annotations

import datetime
import decimal
import math
import re
from typing import Any


def _link(doc: dict[str, Any], key: str) -> str | None:
    v = doc.get(key)
    if isinstance(v, dict) and isinstance(v.get("@odata.id"), str):
        return str(v["@odata.id"])
    return None


def _members(doc: dict[str, Any]) -> list[str]:
    out = []
    for m in doc.get("Members") or []:
        if isinstance(m, dict) and isinstance(m.get("@odata.id"), str):
            out.append(str(m["@odata.id"]))
    return out


def _number(v: Any) -> float | None:
    """A finite, non-negative reading (a number, or one sent as a string such as ``"350"``);
    None for null, other text, NaN or a negative number."""
    if isinstance(v, str):
        try:
            v = float(v.strip())
        except ValueError:
            return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    x = float(v)
    return x if math.isfinite(x) and x >= 0 else None


def _step(v: Any) -> float | None:
    """The resolution a reading shows, in its unit: one unit of its last significant digit as
    sent (``1234.567``: 0.001; ``1234`` or ``1234.0``: 1; trailing zeros say nothing, so the
    finest of several readings is the counter's resolution). Digits past the 14th are a binary
    float's noise (``1234567 * 0.001`` sent as ``1234.5670000000002``), not a finer counter:
    they are left out. None where it is no reading."""
    x = _number(v)
    if x is None:
        return None
    exp = decimal.Decimal(f"{x:.14g}").normalize().as_tuple().exponent
    return 10.0**exp if isinstance(exp, int) else None


def _counter(doc: dict[str, Any]) -> tuple[float | None, float | None]:
    """An ``EnvironmentMetrics`` energy counter in joules (``EnergyJoules``, finer, else
    ``EnergykWh``) and the resolution its reading shows (J; an ``EnergykWh`` sent to 0.001 kWh
    moves in steps of 3600 J)."""
    for key, per in (("EnergyJoules", 1.0), ("EnergykWh", 3.6e6)):
        _, e = _excerpt(doc, key)
        if e is not None:
            q = _step(doc[key]["Reading"])
            return e * per, None if q is None else q * per
    return None, None


def _absent(doc: dict[str, Any]) -> bool:
    """The resource says it is not there (``Status.State`` ``Absent``)."""
    st = doc.get("Status")
    return isinstance(st, dict) and st.get("State") == "Absent"


#: ``Status.State`` values (Resource schema) of a supply that delivers no power: not there,
#: disabled, awaiting an action to start, or present but unusable (lost its input).
OFFLINE = ("Absent", "Disabled", "StandbyOffline", "UnavailableOffline")


def _offline(doc: dict[str, Any]) -> bool:
    """The resource says it delivers nothing (``Status.State`` in ``OFFLINE``)."""
    st = doc.get("Status")
    return isinstance(st, dict) and st.get("State") in OFFLINE


def _links(doc: dict[str, Any], key: str) -> list[str]:
    """The ``@odata.id`` of each entry of ``Links[key]`` (a list or a single link)."""
    links = doc.get("Links")
    v = links.get(key) if isinstance(links, dict) else None
    items = v if isinstance(v, list) else [v]
    return [str(i["@odata.id"]) for i in items if isinstance(i, dict) and "@odata.id" in i]


def _excerpt(doc: dict[str, Any], key: str) -> tuple[bool, float | None]:
    """(the property is there, its ``Reading``) of a sensor excerpt such as ``PowerWatts``."""
    v = doc.get(key)
    if not isinstance(v, dict) or "Reading" not in v:
        return False, None
    return True, _number(v.get("Reading"))


def _control(doc: dict[str, Any]) -> dict[str, Any] | None:
    pc = doc.get("PowerControl")
    if isinstance(pc, list) and pc and isinstance(pc[0], dict):
        return pc[0]
    return None


def _leaf(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1].lower()


def _time(v: Any) -> float | None:
    """A ``DateTimeOffset`` (``2026-11-30T07:32:49.120+00:00``, ``...Z``) as POSIX seconds;
    None where absent, unreadable or without its offset (a local time of unknown zone)."""
    if not isinstance(v, str) or not v.strip():
        return None
    text = v.strip()
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    # Any number of fractional digits, as six (Python 3.10 reads three or six only).
    text = re.sub(r"\.(\d+)", lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return when.timestamp()


def _supplies_input(limit: int, doc: dict[str, Any]) -> float | None:
    """The sum of the legacy ``Power`` resource's ``PowerSupplies[].PowerInputWatts`` (the
    power they draw from the wall), leaving out absent ones, and off-line ones without a
    figure (a supply that lost its input: ``UnavailableOffline``, null); None where a supply
    in service has no figure, or none has one (at most ``limit`` read)."""
    supplies = doc.get("PowerSupplies")
    if not isinstance(supplies, list):
        return None
    present = [s for s in supplies if isinstance(s, dict) and not _absent(s)]
    total = 0.0
    counted = 0
    for s in present[:limit]:
        w = _number(s.get("PowerInputWatts"))
        if w is None and _offline(s):
            continue
        if w is None:
            return None
        total += w
        counted += 1
    return total if counted else None
