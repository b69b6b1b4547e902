"""Vendors' answers the node's figure must not be misread from: an energy counter's resolution,
and a multi-node enclosure's shared power supplies, against a real HTTPS server on 127.0.0.1
(``redfish_server``) serving ``EnvironmentMetrics`` as BMCs do: ``EnergykWh.Reading`` is a
cumulative counter in kWh, often sent to 0.001 kWh (3600 J) or whole kWh, beside
``PowerWatts.Reading``.

A counter read every 5 s (the default period) at 1 kW moves by one or two 3600 J steps between
readings: its mean power between two updates is 720 W or 1440 W, not 1000 W. Such a mean is
used only where the counter's resolution leaves it within ``COUNTER_MAX_ERROR``; the result
says the resolution and the ± it leaves.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from carbonctx._bmc import BmcSource, RedfishError, RedfishPower, Transport

pytest.importorskip("cryptography")
from redfish_server import CHASSIS, RedfishServer, make_certificate

ENV = f"{CHASSIS}/EnvironmentMetrics"
PERIOD_S = 5.0


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("bmc"))


def _env(watts: float, energy: object, key: str = "EnergykWh") -> dict[str, object]:
    return {
        "@odata.id": ENV,
        "@odata.type": "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics",
        "Id": "EnvironmentMetrics",
        "PowerWatts": {"DataSourceUri": f"{CHASSIS}/Sensors/TotalPower", "Reading": watts},
        key: {"DataSourceUri": f"{CHASSIS}/Sensors/TotalEnergy", "Reading": energy},
    }


def _pushed(srv: RedfishServer, cert: tuple[Path, Path], counter: list[object], key: str):
    """The power the poller would push for each served counter value, read every 5 s."""
    p = RedfishPower(Transport(srv.url, srv.user, srv.password, verify=str(cert[0])))
    b = BmcSource(srv.url, None, None, verify=True, period_s=PERIOD_S, note=lambda k, m: None)
    out = []
    for i, value in enumerate(counter):
        srv.docs[ENV] = _env(1000.0, value, key)
        out.append(b._watts(p.read(), i * PERIOD_S))
    p.t.close()
    return b, out


def test_a_kwh_counter_in_3600_j_steps_gives_way_to_the_power_reading(
    cert: tuple[Path, Path],
) -> None:
    # 1 kW for 5 s is 5000 J: a counter sent to 0.001 kWh reads (truncated) as below.
    kwh = [math.floor((1234.0 + i * 5000 / 3.6e6) * 1000) / 1000 for i in range(12)]
    assert len({round(b - a, 3) for a, b in itertools.pairwise(kwh)}) == 2  # steps of 1 or 2
    with RedfishServer(cert) as srv:
        b, pushed = _pushed(srv, cert, kwh, "EnergykWh")
    assert pushed == [1000.0] * len(kwh)  # never 720 W or 1440 W
    assert b.counter_used is False
    note = b.provenance()
    assert "resolution 3600 J" in note and "power reading is used" in note


def test_a_fine_counter_is_used_and_its_error_stated(cert: tuple[Path, Path]) -> None:
    # EnergyJoules to the joule (EnvironmentMetrics v1.2): 4001 J per 5 s; PowerWatts says
    # 1000 W, the counter 800.2 W: the counter is the better figure and is used.
    joules = [5.0e9 + 4001 * i for i in range(6)]
    with RedfishServer(cert) as srv:
        b, pushed = _pushed(srv, cert, joules, "EnergyJoules")
    assert pushed[:2] == [1000.0] * 2  # first sight; the first update only dates the counter
    assert pushed[2:] == [pytest.approx(4001 / PERIOD_S)] * 4
    assert b.counter_used is True
    # 1 J of 4001 J: said as such, not "0.0 %" (and a finer one as "within ±0.01 %").
    assert "within ±0.025 %" in b.provenance() and "resolution 1 J" in b.provenance()


def test_a_sleds_shared_supplies_are_not_its_power(cert: tuple[Path, Path]) -> None:
    # A multi-node enclosure (four sleds in 2U sharing two supplies) lists the shared supplies
    # in each sled's ``Power`` resource (Power v1: ``PowerSupplies[].PowerInputWatts``), and
    # ``PowerSubsystem`` the same: 1600 W is the whole enclosure's draw. The sled's own power
    # is its chassis sensor (350 W).
    coll, power, sub, sens = (
        "/redfish/v1/Chassis",
        f"{CHASSIS}/Power",
        f"{CHASSIS}/PowerSubsystem",
        f"{CHASSIS}/Sensors",
    )
    with RedfishServer(cert, layout="power") as srv:
        srv.docs[coll] = {"@odata.id": coll, "Members": [{"@odata.id": CHASSIS}]}
        srv.docs[CHASSIS] = {
            "@odata.id": CHASSIS,
            "@odata.type": "#Chassis.v1_21_0.Chassis",
            "ChassisType": "Sled",
            "Status": {"State": "Enabled"},
            "Power": {"@odata.id": power},
            "PowerSubsystem": {"@odata.id": sub},
            "Sensors": {"@odata.id": sens},
            "Links": {"ContainedBy": {"@odata.id": "/redfish/v1/Chassis/Enclosure"}},
        }
        srv.docs[power] = {
            "@odata.id": power,
            "@odata.type": "#Power.v1_5_0.Power",
            "PowerControl": [],
            "PowerSupplies": [
                {"MemberId": "0", "PowerInputWatts": 800, "Status": {"State": "Enabled"}},
                {"MemberId": "1", "PowerInputWatts": 800, "Status": {"State": "Enabled"}},
            ],
        }
        srv.docs[sub] = {"@odata.id": sub, "PowerSupplies": {"@odata.id": f"{sub}/PowerSupplies"}}
        srv.docs[f"{sub}/PowerSupplies"] = {
            "@odata.id": f"{sub}/PowerSupplies",
            "Members": [{"@odata.id": f"{sub}/PowerSupplies/0"}],
        }
        srv.docs[f"{sub}/PowerSupplies/0"] = {"Metrics": {"@odata.id": f"{sub}/PSU0/Metrics"}}
        srv.docs[f"{sub}/PSU0/Metrics"] = {"InputPowerWatts": {"Reading": 800}}
        srv.docs[sens] = {"@odata.id": sens, "Members": [{"@odata.id": f"{sens}/total_power"}]}
        srv.docs[f"{sens}/total_power"] = {
            "@odata.id": f"{sens}/total_power",
            "ReadingType": "Power",
            "ReadingUnits": "W",
            "PhysicalContext": "Chassis",
            "Reading": 350.0,
        }
        p = RedfishPower(Transport(srv.url, srv.user, srv.password, verify=str(cert[0])))
        assert p.read().watts == 350.0
        assert p.locator is not None and p.locator.kind == "sensors"
        # Without a sensor of its own, the sled has no reading: the error says why.
        srv.docs[CHASSIS].pop("Sensors")
        p.locator = None
        with pytest.raises(RedfishError, match="shared with the enclosure") as e:
            p.read()
        assert e.value.permanent
        p.t.close()


def test_a_supply_out_of_service_without_a_figure_is_left_out(cert: tuple[Path, Path]) -> None:
    # A redundant pair with one supply's input cord pulled: that supply is present but out of
    # service (Resource schema ``Status.State`` ``UnavailableOffline``) and its input power is
    # null; the other carries the node. One in service without a figure still gives no total.
    power = f"{CHASSIS}/Power"
    with RedfishServer(cert, layout="power") as srv:
        srv.docs[power] = {
            "@odata.id": power,
            "@odata.type": "#Power.v1_7_1.Power",
            "PowerSupplies": [
                {"MemberId": "0", "PowerInputWatts": 420, "Status": {"State": "Enabled"}},
                {
                    "MemberId": "1",
                    "PowerInputWatts": None,
                    "Status": {"State": "UnavailableOffline", "Health": "Critical"},
                },
            ],
        }
        p = RedfishPower(Transport(srv.url, srv.user, srv.password, verify=str(cert[0])))
        assert p.read().watts == 420.0
        srv.docs[power]["PowerSupplies"][0]["PowerInputWatts"] = None
        assert p.read().watts is None
        p.t.close()
    sub = f"{CHASSIS}/PowerSubsystem/PowerSupplies"
    with RedfishServer(cert, layout="subsystem", power=lambda t: 500.0) as srv:
        srv.docs[sub] = {
            "@odata.id": sub,
            "Members": [{"@odata.id": f"{sub}/{i}"} for i in range(3)],
        }
        srv.docs[f"{sub}/2"] = {
            "@odata.id": f"{sub}/2",
            "Status": {"State": "UnavailableOffline"},
            "Metrics": {"@odata.id": f"{sub}/2/Metrics"},
        }
        srv.docs[f"{sub}/2/Metrics"] = {"InputPowerWatts": {"Reading": None}}
        p = RedfishPower(Transport(srv.url, srv.user, srv.password, verify=str(cert[0])))
        assert p.read().watts == pytest.approx(500.0)
        p.t.close()


def test_a_redirect_is_followed_on_the_bmc_only(cert: tuple[Path, Path]) -> None:
    # A BMC may answer 301 with a ``Location`` (RFC 9110 15.4): on the same BMC (a moved or
    # slash-ended path, even relative) it is followed; to another scheme or host (``http`` to
    # ``https``, elsewhere) it is not, and the error says where to point redfish_url.
    moved = f"{CHASSIS}/EnvironmentMetricsMoved"
    with RedfishServer(cert) as srv:
        srv.docs[moved] = _env(640.0, 12.5)
        srv.modes[ENV] = f"redirect:{moved}"
        p = RedfishPower(Transport(srv.url, srv.user, srv.password, verify=str(cert[0])))
        assert p.read().watts == 640.0
        srv.modes[ENV] = "redirect:EnvironmentMetricsMoved"  # relative to the chassis
        assert p.read().watts == 640.0
        srv.modes[ENV] = "redirect:http://127.0.0.1:9/redfish/v1/Chassis/1U/EnvironmentMetrics"
        with pytest.raises(RedfishError, match=r"redirects to http://127\.0\.0\.1:9/") as e:
            p.read()
        assert e.value.permanent and "redfish_url" in e.value.message
        assert srv.password not in e.value.message
        assert not srv.requests("/redfish/v1/Chassis/1U/EnvironmentMetrics/")
        p.t.close()


def test_a_reading_time_a_little_old_may_be_a_rarely_refreshed_sensor() -> None:
    # A BMC that refreshes its sensors every 30 s gives a ReadingTime up to 30 s before the
    # request: the note says that this, and not only a clock off, may be why it is not used.
    b = BmcSource("https://127.0.0.1:1", None, None, verify=True, period_s=5.0, note=print)
    b._push(300.0, 0, "request", -25.0)
    assert "not been refreshed for that long" in b.provenance()
    b.skew_s = -3 * 3600.0  # a clock hours off: that alone
    assert "refreshed" not in b.provenance() and "-10800 s off" in b.provenance()


def test_float_noise_in_a_kwh_counter_is_not_a_finer_resolution(cert: tuple[Path, Path]) -> None:
    # A BMC that keeps watt-hours and sends ``wh * 0.001`` in shortest round-trip form sends
    # some readings with a binary float's noise (1234.5670000000002): their 17 digits are not a
    # counter finer than 0.001 kWh, which still moves in 3600 J steps at 1 kW every 5 s.
    wh = [math.floor(1234000 + i * 5000 / 3600) for i in range(12)]
    kwh = [w * 0.001 for w in wh]
    assert any(len(repr(v)) > 12 for v in kwh)  # some carry the noise
    with RedfishServer(cert) as srv:
        b, pushed = _pushed(srv, cert, kwh, "EnergykWh")
    assert pushed == [1000.0] * len(kwh)
    assert b.counter_used is False and "resolution 3600 J" in b.provenance()


def test_a_supply_is_counted_again_once_back_in_service(cert: tuple[Path, Path]) -> None:
    # A redundant pair whose second supply lost its input when the reading was first located
    # (``UnavailableOffline``, null), then plugged back in: the two share the load again and
    # both are counted. One that goes off-line later is left out, not the whole total lost.
    sub = f"{CHASSIS}/PowerSubsystem/PowerSupplies"
    with RedfishServer(cert, layout="subsystem", power=lambda t: 500.0) as srv:
        srv.docs[sub] = {
            "@odata.id": sub,
            "Members": [{"@odata.id": f"{sub}/{i}"} for i in range(3)],
        }
        srv.docs[f"{sub}/2"] = {
            "@odata.id": f"{sub}/2",
            "Status": {"State": "UnavailableOffline", "Health": "Critical"},
            "Metrics": {"@odata.id": f"{sub}/2/Metrics"},
        }
        srv.docs[f"{sub}/2/Metrics"] = {"InputPowerWatts": {"Reading": None}}
        p = RedfishPower(Transport(srv.url, srv.user, srv.password, verify=str(cert[0])))
        assert p.read().watts == pytest.approx(500.0)
        srv.docs[f"{sub}/2"]["Status"] = {"State": "Enabled", "Health": "OK"}
        srv.docs[f"{sub}/2/Metrics"] = {"InputPowerWatts": {"Reading": 250.0}}
        assert p.read().watts == pytest.approx(750.0)
        # Back in service but no figure this time: no total (nothing invented).
        srv.docs[f"{sub}/2/Metrics"] = {"InputPowerWatts": {"Reading": None}}
        assert p.read().watts is None
        srv.docs[f"{sub}/2"]["Status"] = {"State": "Disabled"}
        assert p.read().watts == pytest.approx(500.0)
        p.t.close()


def test_a_sleds_legacy_supplies_alone_give_no_reading_and_say_why(
    cert: tuple[Path, Path],
) -> None:
    # A sled whose only figure is its enclosure's supplies (legacy ``Power``, no
    # ``PowerControl``, no ``PowerSubsystem`` nor sensors): no reading, and the error says why.
    coll, power = "/redfish/v1/Chassis", f"{CHASSIS}/Power"
    with RedfishServer(cert, layout="power") as srv:
        srv.docs[coll] = {"@odata.id": coll, "Members": [{"@odata.id": CHASSIS}]}
        srv.docs[CHASSIS] = {
            "@odata.id": CHASSIS,
            "ChassisType": "Blade",
            "Power": {"@odata.id": power},
        }
        srv.docs[power] = {
            "@odata.id": power,
            "PowerSupplies": [{"MemberId": "0", "PowerInputWatts": 2400}],
        }
        p = RedfishPower(Transport(srv.url, srv.user, srv.password, verify=str(cert[0])))
        with pytest.raises(RedfishError, match="not its supplies: shared") as e:
            p.read()
        assert e.value.permanent
        p.t.close()


def test_a_redirect_loop_is_followed_once_and_said(cert: tuple[Path, Path]) -> None:
    # ENV redirects to a path that redirects back: one hop is followed, then the error says
    # where it was sent again (no loop, no endless requests).
    moved = f"{CHASSIS}/EnvironmentMetricsMoved"
    with RedfishServer(cert) as srv:
        srv.docs[ENV] = _env(640.0, 12.5)
        p = RedfishPower(Transport(srv.url, srv.user, srv.password, verify=str(cert[0])))
        assert p.read().watts == 640.0
        srv.modes[ENV] = f"redirect:{moved}"
        srv.modes[moved] = f"redirect:{ENV}"
        before = len(srv.requests(ENV))
        with pytest.raises(RedfishError, match=r"redirected again, to https://127\.0\.0\.1"):
            p.read()
        assert len(srv.requests(ENV)) == before + 1 and len(srv.requests(moved)) == 1
        p.t.close()
