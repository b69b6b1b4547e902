"""Reading Redfish documents: links, collection members, ``Status.State``, and readings (a
number, or one sent as a string; never null, text, NaN or a negative number)."""

from __future__ import annotations

import math
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


def _absent(doc: dict[str, Any]) -> bool:
    """The resource says it is not there (``Status.State`` ``Absent``)."""
    st = doc.get("Status")
    return isinstance(st, dict) and st.get("State") == "Absent"


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
