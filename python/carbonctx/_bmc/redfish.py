"""The node's wall power from its BMC, as DMTF Redfish describes it.

Where the reading is, in the order tried for the chosen chassis:

1. ``EnvironmentMetrics`` (Redfish 2020.4 on): an energy counter, ``EnergyJoules.Reading`` (J,
   from EnvironmentMetrics v1.2) else ``EnergykWh.Reading`` (kWh), and ``PowerWatts.Reading``
   (W);
2. the legacy ``Power`` resource: ``PowerControl[0].PowerConsumedWatts`` (the chassis's power
   now), else ``PowerControl[0].PowerMetrics.AverageConsumedWatts`` (a mean over the last
   ``IntervalInMin`` minutes, labelled as such), else the sum of its ``PowerSupplies``'
   ``PowerInputWatts`` (those present; not for a ``Blade`` or ``Sled``, whose supplies are
   its enclosure's, shared by several nodes);
3. ``PowerSubsystem`` (the successor of ``Power``): the ``InputPowerWatts.Reading`` of each of
   its ``PowerSupplies``' ``Metrics``, added up (the power the supplies draw from the wall; a
   supply whose ``Status.State`` is ``Absent`` or off-line is left out; not for a blade or sled);
4. the chassis's ``Sensors``: one of ``ReadingType`` ``EnergykWh`` or ``EnergyJoules`` and one of
   ``Power``, of the whole chassis (``PhysicalContext`` ``Chassis``, ``ElectricalContext``
   ``Total``, or unstated), among the sensors whose names speak of power or energy (those
   that say ``total`` first). An energy sensor's ``ReadingUnits`` (``J``, ``kW.h``, ``W.h``)
   gives its unit where stated, and a sensor's ``ReadingTime`` when it read (see ``timing``).

The chassis are read in one request where the service offers ``$expand``
(``ProtocolFeaturesSupported.ExpandQuery``), else one by one (at most ``MAX_CHASSIS``; where
more are listed, those the computer system's ``Links.Chassis`` names first). Readings are
numbers; a number sent as a string (``"350"``) is read too; null, text, NaN or a negative
number is no reading. Collections are read across ``Members@odata.nextLink`` pages.

A link the chassis does not have, or one that answers HTTP 404, is skipped. The chassis is the
one the URL names (``https://bmc/redfish/v1/Chassis/1``), else the first of
``/redfish/v1/Chassis`` that gives a reading among those of a node's type (``RackMount``,
``Blade``, ``StandAlone``, ...; or none given), present (``Status.State`` not ``Absent``), the
top of the tree first: one inside another such chassis (``Links.ContainedBy``) comes after it,
and one that holds a computer system (``Links.ComputerSystems``) before one that does not. An
enclosure's or a rack's figure would hold other nodes', and a component's (``Card``,
``Module`` such as a GPU baseboard or one GPU's chassis, ``Drawer``) only part of this one, so
those are read only when the URL names them; but a ``Rack``, ``Enclosure`` or ``Other`` chassis
that directly holds exactly one computer system is that node's (some BMCs call a rack server's
own chassis ``Rack``), tried after those of a node's type.

The search is bounded: at most ``SEARCH_S`` seconds of requests (each bounded on its own by the
transport), after which it fails (tried again later) and says to name the chassis in the URL; it
stops at the next request once its owner says so (``stopped``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import attrs

from carbonctx._bmc.payload import (
    _absent,
    _control,
    _counter,
    _excerpt,
    _leaf,
    _link,
    _links,
    _members,
    _number,
    _offline,
    _step,
    _supplies_input,
    _time,
)
from carbonctx._bmc.transport import RedfishError, Transport

__all__ = ["Locator", "Reading", "RedfishPower"]

#: Chassis types that hold one node, preferred over enclosures, racks and components.
NODE_TYPES = ("RackMount", "Blade", "StandAlone", "Sled", "Tower", "Desktop")
#: Types that are the node's chassis where it directly holds exactly one computer system
#: (Cisco's CIMC calls a rack server's chassis ``Rack``): tried after the node types.
HOLDER_TYPES = ("Rack", "Enclosure", "Other")
#: Types whose power supplies are the enclosure's, shared by its nodes: their sum is not read.
SHARED_SUPPLY_TYPES = ("Blade", "Sled")
#: The search for the reading takes at most this many seconds of requests.
SEARCH_S = 300.0
#: Chassis read one by one, at most (a GPU server's BMC lists one per GPU, switch, retimer,
#: ...): where more are listed, those the computer system names (``Links.Chassis``) first.
MAX_CHASSIS = 64
#: Members of a collection listed, at most.
MAX_LISTED = 1024
#: Power supplies read, at most.
MAX_SUPPLIES = 16
J_PER_KWH = 3.6e6
#: Sensor reading types that count energy, and joules per unit of each.
ENERGY_UNITS = {"EnergykWh": J_PER_KWH, "EnergyJoules": 1.0, "EnergyWh": 3600.0}
#: Joules per unit of an energy sensor's ``ReadingUnits`` (UCUM), and watts per power unit.
ENERGY_READING_UNITS = {"J": 1.0, "kJ": 1e3, "W.h": 3600.0, "Wh": 3600.0, "kW.h": J_PER_KWH}
ENERGY_READING_UNITS["kWh"] = J_PER_KWH
POWER_READING_UNITS = {"W": 1.0, "kW": 1e3, "mW": 1e-3}
#: Sensors read, at most, and the words in a sensor's name that make it worth reading.
MAX_SENSORS = 32
#: Pages of a collection followed (``Members@odata.nextLink``), at most.
MAX_PAGES = 8
SENSOR_WORDS = ("power", "energy", "watt", "pwr")


@attrs.frozen
class Reading:
    """One answer: watts (None: the BMC gave none), its energy counter in joules (None: it has
    none, or gave none this time), when the BMC says it read them (``ReadingTime``, POSIX
    seconds on its clock; None: not said), and the window a mean is over (seconds; None: not a
    mean); ``energy_step_j`` is the counter's resolution as this reading shows it (J: one unit
    of its last digit; None: unknown)."""

    watts: float | None
    energy_j: float | None = None
    read_at: float | None = None
    window_s: float | None = None
    energy_step_j: float | None = None


@attrs.frozen
class Locator:
    """Where the reading is: ``kind`` (``environment``, ``power``, ``power-average``,
    ``supplies``, ``sensors``), the resource(s) read each time, and what the label says."""

    kind: str
    paths: tuple[str, ...]
    chassis: str
    what: str


class RedfishPower:
    """Reads the node's power from one BMC; finds where on first use (and again after the
    resource disappears). Every failure is a :class:`RedfishError`."""

    def __init__(
        self,
        transport: Transport,
        chassis: str | None = None,
        *,
        search_s: float = SEARCH_S,
        stopped: Callable[[], bool] | None = None,
    ) -> None:
        self.t = transport
        self.chassis = chassis
        self.locator: Locator | None = None
        self.search_s = search_s
        self._stopped = stopped
        self._search_end = math.inf
        self._searched = 0

    def __repr__(self) -> str:
        return f"<carbonctx Redfish power reader for {self.t.host}>"

    # ---------------------------------------------------------------- where

    def locate(self) -> Locator:
        self._search_end = time.monotonic() + self.search_s
        self._searched = 0
        try:
            return self._locate()
        finally:
            self._search_end = math.inf

    def _get(self, path: str) -> dict[str, Any]:
        """A GET of the search, within its bound."""
        if self._stopped is not None and self._stopped():
            raise self.t.error(f"the search on the BMC at {self.t.host} was stopped")
        if time.monotonic() >= self._search_end:
            raise self.t.error(
                f"no power reading found on the BMC at {self.t.host} within {self.search_s:g} s "
                f"({self._searched} requests); tried again later. Name the chassis with the "
                "reading in the URL, e.g. https://BMC/redfish/v1/Chassis/1, to skip the search"
            )
        self._searched += 1
        return self.t.get(path)

    def _locate(self) -> Locator:
        docs: list[tuple[str, dict[str, Any]]] | None
        if self.chassis is not None:
            docs = [(self.chassis, self._get(self.chassis))]
        else:
            root = self._get("/redfish/v1/")
            coll = _link(root, "Chassis") or "/redfish/v1/Chassis"
            docs = self._expanded(root, coll)
            if docs is None:
                candidates = self._collection(coll, MAX_LISTED)
                if len(candidates) > MAX_CHASSIS:  # the system's own chassis among those read
                    held = {c.rstrip("/") for c in self._system_chassis(root)}
                    candidates.sort(key=lambda c: c.rstrip("/") not in held)
                got = [(c, self._get_or_none(c)) for c in candidates[:MAX_CHASSIS]]
                docs = [(c, d) for c, d in got if d is not None]  # 404/403: not there for us
            if not docs:
                raise self.t.error(
                    f"the BMC at {self.t.host} lists no chassis at {coll}", permanent=True
                )
        tried: list[str] = []
        others: list[str] = []
        blank: list[Locator] = []
        if self.chassis is None:
            docs = self._node_first(docs, others)
        for path, doc in docs:
            loc = self._locate_in(path, doc, tried, blank)
            if loc is not None:
                return loc
        if blank:
            # Only null readings now: the first such place is read (a null is then a failed
            # reading, tried again, rather than no reading at all).
            return blank[0]
        more = f" and {len(others) - 8} more" if len(others) > 8 else ""
        skipped = (
            f"; not read, as they may hold more or less than this node: "
            f"{', '.join(others[:8])}{more}"
            if others
            else ""
        )
        raise self.t.error(
            f"no power reading on the BMC at {self.t.host} (looked at "
            f"{', '.join(tried) or 'no power resource'}{skipped}). Name a chassis with a reading "
            "in the URL, e.g. https://BMC/redfish/v1/Chassis/1",
            permanent=True,
        )

    @staticmethod
    def _node_first(
        docs: list[tuple[str, dict[str, Any]]], others: list[str]
    ) -> list[tuple[str, dict[str, Any]]]:
        """The chassis that may be the node, the top of the tree first; the others (with
        their type) go to ``others``."""
        nodes = []
        holders = []  # a Rack, Enclosure or Other chassis that holds exactly one system
        for path, doc in docs:
            kind = doc.get("ChassisType")
            holder = kind in HOLDER_TYPES and len(_links(doc, "ComputerSystems")) == 1
            if kind is not None and kind not in NODE_TYPES and not holder:
                others.append(f"{path} ({kind})")
            elif _absent(doc):
                others.append(f"{path} (Absent)")
            elif holder:
                holders.append((path, doc))
            else:
                nodes.append((path, doc))
        paths = {p.rstrip("/") for p, _ in nodes}

        def rank(item: tuple[str, dict[str, Any]]) -> tuple[bool, bool]:
            _, doc = item
            inside = any(c.rstrip("/") in paths for c in _links(doc, "ContainedBy"))
            return inside, not _links(doc, "ComputerSystems")

        return sorted(nodes, key=rank) + holders  # stable: the BMC's order otherwise

    def _expanded(self, root: dict[str, Any], coll: str) -> list[tuple[str, dict[str, Any]]] | None:
        """The chassis in one request, where the service says it expands a collection's
        members (``ProtocolFeaturesSupported.ExpandQuery``: ``NoLinks``, ``$expand=.``, or
        ``ExpandAll``, ``$expand=*``, one level); None where it does not, or the answer holds
        no expanded members (then each is read on its own)."""
        pfs = root.get("ProtocolFeaturesSupported")
        eq = pfs.get("ExpandQuery") if isinstance(pfs, dict) else None
        if not isinstance(eq, dict):
            return None
        how = "." if eq.get("NoLinks") is True else "*" if eq.get("ExpandAll") is True else None
        if how is None:
            return None
        levels = "($levels=1)" if eq.get("Levels") is True else ""
        try:
            doc = self._get(f"{coll}?$expand={how}{levels}")
        except RedfishError as e:
            if e.status == 401 or e.permanent:
                raise
            return None  # refused (400, 501), too slow or too large: one request each
        members = doc.get("Members")
        if not isinstance(members, list) or doc.get("Members@odata.nextLink"):
            return None
        out = []
        for m in members[:MAX_LISTED]:  # already read: the ranking picks among them all
            if not isinstance(m, dict) or not isinstance(m.get("@odata.id"), str):
                return None
            if len(m) <= 1:  # a bare link: not expanded after all
                return None
            out.append((str(m["@odata.id"]), m))
        return out or None

    def _system_chassis(self, root: dict[str, Any]) -> list[str]:
        """The chassis that the service's computer systems say hold them (``Links.Chassis``
        of the first few of ``/redfish/v1/Systems``)."""
        systems = _link(root, "Systems")
        out: list[str] = []
        for s in self._collection(systems, 4) if systems else []:
            if (doc := self._get_or_none(s)) is not None:
                out += _links(doc, "Chassis")
        return out

    def _collection(self, path: str, limit: int) -> list[str]:
        """A collection's members, across its ``Members@odata.nextLink`` pages (at most
        ``limit`` members and ``MAX_PAGES`` pages)."""
        out: list[str] = []
        pages = {path}
        page: str | None = path
        for _ in range(MAX_PAGES):
            if page is None or len(out) >= limit:
                break
            doc = self._get_or_none(page)
            if doc is None:
                break
            out += [m for m in _members(doc) if m not in out]
            nxt = doc.get("Members@odata.nextLink")
            page = nxt if isinstance(nxt, str) and nxt not in pages else None  # no loops
            pages.add(str(page))
        return out[:limit]

    def _locate_in(
        self, chassis: str, doc: dict[str, Any], tried: list[str], blank: list[Locator]
    ) -> Locator | None:
        """Where this chassis's reading is; a place whose reading is null now goes to
        ``blank`` (used when no other place has a number)."""
        env = _link(doc, "EnvironmentMetrics")
        if env is not None:
            tried.append(env)
            if (em := self._get_or_none(env)) is not None:
                names = ("EnergyJoules", "EnergykWh", "PowerWatts")
                has = [n for n in names if _excerpt(em, n)[0]]
                if has:
                    what = " and ".join(has)
                    loc = Locator("environment", (env,), chassis, f"EnvironmentMetrics {what}")
                    if _environment(em) != Reading(None):
                        return loc
                    blank.append(loc)
        # A blade's or sled's supplies feed every node of its enclosure (a multi-node chassis
        # lists the shared supplies under each node): their sum is not this node's.
        shared = doc.get("ChassisType") in SHARED_SUPPLY_TYPES
        power = _link(doc, "Power")
        if power is not None:
            tried.append(f"{power} (not its supplies: shared)" if shared else power)
            pw = self._get_or_none(power)
            found = None if pw is None else self._locate_power(chassis, power, pw, blank, shared)
            if found is not None:
                return found
        sub = _link(doc, "PowerSubsystem")
        if sub is not None and shared:
            tried.append(f"{sub} (not its supplies: shared with the enclosure's other nodes)")
        elif sub is not None:
            tried.append(sub)
            if (ps := self._get_or_none(sub)) is not None:
                supplies = _link(ps, "PowerSupplies")
                metrics = []
                for m in self._collection(supplies, MAX_SUPPLIES) if supplies else []:
                    supply = self._get_or_none(m)
                    if supply is None or _absent(supply):
                        continue  # an empty bay draws nothing (one off-line: read, it may return)
                    if (link := _link(supply, "Metrics")) is not None:
                        metrics += [m, link]  # the supply beside its metrics
                if metrics:
                    return Locator(
                        "supplies",
                        tuple(metrics),
                        chassis,
                        f"PowerSubsystem: InputPowerWatts of {len(metrics) // 2} power supplies",
                    )
        sensors = _link(doc, "Sensors")
        if sensors is not None:
            tried.append(sensors)
            return self._locate_sensors(chassis, sensors)
        return None

    def _locate_power(
        self, chassis: str, power: str, pw: dict[str, Any], blank: list[Locator], shared: bool
    ) -> Locator | None:
        """In the legacy ``Power`` resource: ``PowerConsumedWatts``, else the average, else
        the supplies' ``PowerInputWatts`` (unless ``shared`` with other nodes)."""
        pc = _control(pw)
        if pc is not None:
            pm = pc.get("PowerMetrics")
            avg = _number(pm.get("AverageConsumedWatts")) if isinstance(pm, dict) else None
            now = _number(pc.get("PowerConsumedWatts"))
            if now is not None or ("PowerConsumedWatts" in pc and avg is None):
                loc = Locator("power", (power,), chassis, "Power PowerConsumedWatts")
                if now is not None:
                    return loc
                blank.append(loc)
            elif avg is not None and isinstance(pm, dict):
                window = _number(pm.get("IntervalInMin"))
                over = f" the last {window:g} min" if window else " an unstated interval"
                return Locator(
                    "power-average",
                    (power,),
                    chassis,
                    f"Power AverageConsumedWatts, a mean over{over}: it lags changes by about "
                    "half that and smooths them",
                )
        if not shared and _supplies_input(MAX_SUPPLIES, pw) is not None:
            return Locator(
                "power-supplies", (power,), chassis, "Power: PowerInputWatts of its supplies"
            )
        return None

    def _locate_sensors(self, chassis: str, collection: str) -> Locator | None:
        """The chassis's own power and energy sensors (``ReadingType`` ``Power``, ``EnergykWh``
        or ``EnergyJoules``, of the whole chassis), among the members whose names speak of
        power or energy, those that say ``total`` first (at most ``MAX_SENSORS`` read)."""
        members = self._collection(collection, MAX_LISTED)
        named = [m for m in members if any(w in _leaf(m) for w in SENSOR_WORDS)]
        named.sort(key=lambda m: "total" not in _leaf(m))
        energy: str | None = None
        power: str | None = None
        for m in named[:MAX_SENSORS]:
            doc = self._get_or_none(m)
            if doc is None or doc.get("PhysicalContext") not in (None, "Chassis") or _absent(doc):
                continue
            if doc.get("ElectricalContext") not in (None, "Total"):
                continue
            kind = doc.get("ReadingType")
            if kind in ENERGY_UNITS and energy is None:
                energy = m
            elif kind == "Power" and power is None:
                power = m
            if energy is not None and power is not None:
                break
        if energy is None and power is None:
            return None
        what = " and ".join(
            f"sensor {p.rsplit('/', 1)[-1]}" for p in (energy, power) if p is not None
        )
        return Locator("sensors", (energy or "", power or ""), chassis, what)

    def _get_or_none(self, path: str) -> dict[str, Any] | None:
        """The resource, or None where it is not there (404) or not for this account (403)."""
        try:
            return self._get(path)
        except RedfishError as e:
            if e.status in (403, 404):
                return None
            raise

    # ---------------------------------------------------------------- reading

    def read(self) -> Reading:
        loc = self.locator
        if loc is None:
            loc = self.locator = self.locate()
        try:
            return self._read(loc)
        except RedfishError as e:
            if e.status == 404:
                self.locator = None  # moved (firmware update): look again next time
            raise

    def _read(self, loc: Locator) -> Reading:
        if loc.kind == "environment":
            return _environment(self.t.get(loc.paths[0]))
        if loc.kind == "power-supplies":
            return Reading(_supplies_input(MAX_SUPPLIES, self.t.get(loc.paths[0])))
        if loc.kind in ("power", "power-average"):
            pc = _control(self.t.get(loc.paths[0])) or {}
            if loc.kind == "power":
                return Reading(_number(pc.get("PowerConsumedWatts")))
            pm = pc.get("PowerMetrics")
            if not isinstance(pm, dict):
                return Reading(None)
            minutes = _number(pm.get("IntervalInMin"))
            window = minutes * 60.0 if minutes else None
            return Reading(_number(pm.get("AverageConsumedWatts")), window_s=window)
        if loc.kind == "sensors":
            # ReadingTime: the energy sensor's where there is one (it dates the counter).
            energy_path, power_path = loc.paths
            energy = watts = at = step = None
            if power_path:
                doc = self.t.get(power_path)
                w = _number(doc.get("Reading"))
                scale = POWER_READING_UNITS.get(str(doc.get("ReadingUnits")), 1.0)
                watts = None if w is None else w * scale
                at = _time(doc.get("ReadingTime"))
            if energy_path:
                doc = self.t.get(energy_path)
                e = _number(doc.get("Reading"))
                per = ENERGY_READING_UNITS.get(str(doc.get("ReadingUnits")))
                if per is None:
                    per = ENERGY_UNITS.get(str(doc.get("ReadingType")), 0.0)
                energy = None if e is None else e * per
                q = _step(doc.get("Reading"))
                step = None if q is None or not per else q * per
                at = _time(doc.get("ReadingTime")) or at
            return Reading(watts, energy, at, energy_step_j=step)
        total, counted = 0.0, 0
        for supply, path in zip(loc.paths[::2], loc.paths[1::2], strict=True):
            _, w = _excerpt(self._get_or_none(path) or {}, "InputPowerWatts")
            if w is None and _offline(self._get_or_none(supply) or {}):
                continue  # out of service now (its input lost, disabled): draws nothing
            if w is None:
                return Reading(None)  # one in service without a figure: no total
            total, counted = total + w, counted + 1
        return Reading(total if counted else None)


def _environment(doc: dict[str, Any]) -> Reading:
    """An ``EnvironmentMetrics`` reading: ``PowerWatts``, and its energy counter (``_counter``)."""
    energy, step = _counter(doc)
    return Reading(_excerpt(doc, "PowerWatts")[1], energy, energy_step_j=step)
