"""The node's wall power from its BMC over Redfish, against a real HTTPS server on 127.0.0.1
(``redfish_server``) that speaks Redfish's documented resources and failures, with the real
native sampler on simulated CPU hardware.

What is checked: the node's figure over a region from the power served (energy counter
preferred to the power reading; legacy ``Power``; ``PowerSubsystem`` where ``Power`` is gone),
that it is shown beside the components and never added to them, that every failure (refused
credentials, 503 with ``Retry-After``, malformed JSON, a null reading, a server that trickles
bytes) degrades with one warning and bounded waits, and that the credentials and session
tokens appear in no output, repr, warning or error. The payload shapes of real BMCs (GPU
baseboard modules, boards inside the node's chassis, ``EnergyJoules``, absent supplies, paged
sensors, numbers sent as strings) are served verbatim and read by the client.
"""

from __future__ import annotations

import itertools
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import carbonctx
from carbonctx import _config
from carbonctx._bmc import STOP_WAIT_S, Reading, RedfishError, RedfishPower, Transport
from carbonctx._measure import process as _process
from carbonctx._output.jsonl import read_jsonl
from carbonctx._results.measurement import Measurement, SourceEnergy
from carbonctx.errors import ConfigurationError
from carbonctx.testing import SimulatedMachine, Wave

pytest.importorskip("cryptography")
from redfish_server import CHASSIS, RedfishServer, make_certificate

ENV = f"{CHASSIS}/EnvironmentMetrics"
NODE = "redfish:node"
#: Generous bounds: nothing here depends on the machine's speed.
WAIT_S = 30.0


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_certificate(tmp_path_factory.mktemp("bmc"))


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[SimulatedMachine]:
    m = SimulatedMachine(tmp_path / "hw", package=Wave.constant(50.0), dram=Wave.constant(5.0))
    m.start()
    yield m
    _process.reset()
    m.close()


def configure(srv: RedfishServer, machine: SimulatedMachine, cert: tuple[Path, Path], **kw: Any):
    args: dict[str, Any] = {
        **machine.settings(),
        "gpu": False,
        "redfish_url": srv.url,
        "redfish_user": srv.user,
        "redfish_password": srv.password,
        "redfish_verify": str(cert[0]),
        "redfish_period_s": 1.0,
    }
    args.update(kw)
    return carbonctx.configure(**args)


def wait_for(cond: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {WAIT_S} s: {what}")
        time.sleep(0.05)


def bmc_readings(n: int) -> None:
    """Start the sampler (one region) and wait until the BMC has answered ``n`` times."""
    with carbonctx.track("warm-up"):
        pass
    rt = _process.runtime()
    assert rt.bmc is not None
    bmc = rt.bmc
    wait_for(lambda: bmc.readings >= n, f"{n} BMC readings")


def region(seconds: float) -> Measurement:
    with carbonctx.track("step") as t:
        time.sleep(seconds)
    return t.result()


def bmc_warnings(w: list[warnings.WarningMessage]) -> list[str]:
    return [str(x.message) for x in w if "BMC" in str(x.message)]


# ---------------------------------------------------------------------------- figures


def test_node_power_from_the_energy_counter_beside_the_components(
    cert: tuple[Path, Path], machine: SimulatedMachine, tmp_path: Path
) -> None:
    # PowerWatts says 900 W; the counter integrates 400 W: the counter is what is used.
    with RedfishServer(cert, power=lambda t: 400.0, power_watts_offset=500.0) as srv:
        out = tmp_path / "regions.jsonl"
        configure(srv, machine, cert, output=str(out))
        bmc_readings(4)
        m = region(1.5)
        node = m.by_source[NODE]
        assert (node.domain, node.backend, node.label) == ("node", "redfish", "node (BMC, Redfish)")
        assert node.method == "integrated-power"
        assert node.joules is not None
        # (The counter's mean power is timed by the client: a loaded machine's request times
        # blur it a little; 900 W, the power reading, is far outside.)
        assert node.joules == pytest.approx(400.0 * m.duration_s, rel=0.1)
        # Beside the components, never in them.
        assert m.energy_j == pytest.approx(m.cpu_j + m.dram_j + m.gpu_j)
        assert m.energy_j < 100.0 * m.duration_s
        assert NODE not in m.missing
        assert m.node_j == node.joules
        assert m.overhead_j is None  # a short region: no overhead figure
        assert node.note is not None
        assert "every 1 s" in node.note and "EnergykWh" in node.note
        assert "interpolated" in node.note
        carbonctx.flush()
        _process.reset()
        # The record, read back, says what the result says of the node.
        regions, _, bad = read_jsonl(str(out))
        assert bad == 0
        got = next(r for r in regions if r["id"] == m.id)["by_source"][NODE]
        want = m.to_dict()["by_source"][NODE]
        assert {k: got[k] for k in ("label", "backend", "domain", "method", "note")} == {
            k: want[k] for k in ("label", "backend", "domain", "method", "note")
        }
        assert got["joules"] == pytest.approx(want["joules"], abs=1e-5)
        assert got["joules"] not in (None, 0.0)


def test_legacy_power_resource_with_http_basic(
    cert: tuple[Path, Path], machine: SimulatedMachine
) -> None:
    with RedfishServer(cert, layout="power", power=lambda t: 250.0, sessions=False) as srv:
        configure(srv, machine, cert)
        bmc_readings(2)
        m = region(1.0)
        assert m.by_source[NODE].joules == pytest.approx(250.0 * m.duration_s, rel=0.03)
        authed = [h for _, method, p, h in srv.log if method == "GET" and p == f"{CHASSIS}/Power"]
        assert authed and all(h.get("authorization", "").startswith("Basic ") for h in authed)
        assert not srv.issued


def test_power_gone_falls_back_to_the_power_subsystem(
    cert: tuple[Path, Path], machine: SimulatedMachine
) -> None:
    with RedfishServer(cert, layout="subsystem", power=lambda t: 300.0) as srv:
        configure(srv, machine, cert)
        bmc_readings(2)
        m = region(1.0)
        node = m.by_source[NODE]
        assert node.joules == pytest.approx(300.0 * m.duration_s, rel=0.03)
        assert node.note is not None and "PowerSubsystem" in node.note
        assert srv.requests(f"{CHASSIS}/Power"), "the legacy resource was tried first"


def test_null_readings_give_way_to_a_resource_with_a_number(cert: tuple[Path, Path]) -> None:
    with RedfishServer(cert, layout="both", power=lambda t: 275.0) as srv:
        srv.modes[ENV] = "null"
        t = Transport(srv.url, srv.user, srv.password, verify=str(cert[0]))
        p = RedfishPower(t)
        assert p.read().watts == 275.0
        assert p.locator is not None and p.locator.kind == "power"
        t.close()


def test_chassis_sensors_when_there_is_no_power_resource(
    cert: tuple[Path, Path], machine: SimulatedMachine
) -> None:
    # The total-power sensor says 750 W; the energy sensor integrates 250 W: the counter wins.
    with RedfishServer(
        cert, layout="sensors", power=lambda t: 250.0, power_watts_offset=500.0
    ) as srv:
        configure(srv, machine, cert)
        bmc_readings(4)
        m = region(1.0)
        node = m.by_source[NODE]
        assert node.joules == pytest.approx(250.0 * m.duration_s, rel=0.1)  # 750: the sensor
        assert node.note is not None and "TotalEnergy" in node.note and "TotalPower" in node.note
        assert not srv.requests(f"{CHASSIS}/Sensors/CPU1Temp"), "only power and energy sensors"


def test_a_step_in_power_is_followed_within_a_reading(
    cert: tuple[Path, Path], machine: SimulatedMachine
) -> None:
    step = {"at": float("inf")}
    with RedfishServer(
        cert, layout="power", power=lambda t: 200.0 if t < step["at"] else 600.0
    ) as srv:
        configure(srv, machine, cert)
        bmc_readings(2)
        step["at"] = time.monotonic()
        n = len(srv.requests(f"{CHASSIS}/Power"))
        wait_for(lambda: len(srv.requests(f"{CHASSIS}/Power")) >= n + 2, "two more readings")
        m = region(1.0)
        assert m.by_source[NODE].joules == pytest.approx(600.0 * m.duration_s, rel=0.03)


def test_overhead_is_given_for_long_regions_only() -> None:
    def measurement(duration: float, node_j: float | None) -> Measurement:
        src = SourceEnergy(
            NODE, "node (BMC, Redfish)", "redfish", "node", "integrated-power", node_j, None
        )
        return Measurement(
            name="r", id=1, pid=1, thread=0, parent=None, start=0.0, end=duration,
            duration_s=duration, energy_j=100.0 * duration, cpu_j=100.0 * duration, dram_j=0.0,
            gpu_j=0.0, uncertainty_j=None, by_source={NODE: src}, co2_g=None, intensity=None,
            zone=None, carbon=None,
        )  # fmt: skip

    long = measurement(120.0, 150.0 * 120.0)
    assert long.node_j == 150.0 * 120.0
    assert long.overhead_j == pytest.approx(50.0 * 120.0)
    assert measurement(10.0, 1500.0).overhead_j is None
    assert measurement(120.0, None).overhead_j is None
    assert measurement(120.0, None).node_j is None


# ---------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("mode", "said"),
    [
        ("password", "refused the credentials"),
        ("malformed", "not JSON"),
        ("null", "null"),
        ("404", "no power reading"),  # and the enclosure's is not taken instead
    ],
)
def test_failures_degrade_with_one_warning(
    cert: tuple[Path, Path], machine: SimulatedMachine, mode: str, said: str
) -> None:
    with RedfishServer(cert) as srv:
        if mode == "password":
            configure(srv, machine, cert, redfish_password="not-the-password")
        else:
            srv.modes[ENV] = mode
            configure(srv, machine, cert)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            with carbonctx.track("warm-up"):
                pass
            rt = _process.runtime()
            assert rt.bmc is not None
            bmc = rt.bmc
            wait_for(lambda: bmc.failures >= 1, "a failed reading")
            ms = [region(0.3) for _ in range(3)]
            carbonctx.flush()
            with carbonctx.track("after"):
                pass
        msgs = bmc_warnings(w)
        assert len(msgs) == 1, msgs
        assert said in msgs[0]
        for m in ms:
            assert m.by_source[NODE].joules is None
            assert m.energy_j > 0  # the components are still measured
        assert srv.password not in msgs[0]


def test_503_with_retry_after_is_honoured_and_readings_resume(
    cert: tuple[Path, Path], machine: SimulatedMachine
) -> None:
    with RedfishServer(cert, power=lambda t: 350.0) as srv:
        srv.retry_after = 2
        configure(srv, machine, cert)
        bmc_readings(1)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            srv.modes[ENV] = "503"
            n = len(srv.requests(ENV))
            wait_for(lambda: len(srv.requests(ENV)) >= n + 1, "a 503 answer")
            first_503 = srv.requests(ENV)[n]
            del srv.modes[ENV]
            wait_for(lambda: len(srv.requests(ENV)) >= n + 2, "the next try")
            assert srv.requests(ENV)[n + 1] - first_503 >= 1.9  # Retry-After: 2
            rt = _process.runtime()
            assert rt.bmc is not None
            bmc = rt.bmc
            wait_for(lambda: bmc.failures == 0 and bmc.readings >= 4, "readings again")
            m = region(1.0)
            with carbonctx.track("after"):
                pass
        assert m.by_source[NODE].joules == pytest.approx(350.0 * m.duration_s, rel=0.05)
        msgs = bmc_warnings(w)
        assert len(msgs) == 1 and "HTTP 503" in msgs[0] and "retry after 2 s" in msgs[0]


def test_a_trickling_server_never_holds_anything_up(
    cert: tuple[Path, Path], machine: SimulatedMachine
) -> None:
    with RedfishServer(cert) as srv:
        srv.modes[ENV] = "trickle"
        srv.trickle_s = 0.2
        configure(srv, machine, cert)  # a request ends within max(1, period) = 1 s
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            t0 = time.monotonic()
            with carbonctx.track("first"):
                pass
            rt = _process.runtime()
            assert rt.bmc is not None
            bmc = rt.bmc
            wait_for(lambda: bmc.failures >= 1, "the request given up")
            m = region(0.2)
            with carbonctx.track("after"):
                pass
            started = time.monotonic()
            carbonctx.configure(redfish_url=None)  # stops the BMC thread mid-request
            stopped = time.monotonic() - started
        assert m.by_source[NODE].joules is None
        msgs = bmc_warnings(w)
        # One warning: the request given up, or (when the first region resolves before that)
        # the node's figure missing; never both.
        assert len(msgs) == 1, msgs
        assert "no complete answer" in msgs[0] or "redfish:node" in msgs[0]
        # Bounds, not speeds: the first region waited at most one request; configure() waits
        # at most STOP_WAIT_S for the thread (and the sampler's own stop).
        assert time.monotonic() - t0 < WAIT_S
        assert stopped < STOP_WAIT_S + 5.0


def test_unverified_certificate_works_and_warns_once(
    cert: tuple[Path, Path], machine: SimulatedMachine
) -> None:
    with RedfishServer(cert, power=lambda t: 123.0) as srv:
        configure(srv, machine, cert, redfish_verify=False)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            bmc_readings(2)
            m = region(0.5)
        assert m.by_source[NODE].joules == pytest.approx(123.0 * m.duration_s, rel=0.05)
        msgs = [str(x.message) for x in w if "not verified" in str(x.message)]
        assert len(msgs) == 1


def test_an_unknown_certificate_is_refused(
    cert: tuple[Path, Path], machine: SimulatedMachine
) -> None:
    with RedfishServer(cert) as srv:
        configure(srv, machine, cert, redfish_verify=True)  # the system's CAs: not this one
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            with carbonctx.track("warm-up"):
                pass
            rt = _process.runtime()
            assert rt.bmc is not None
            bmc = rt.bmc
            wait_for(lambda: bmc.failures >= 1, "a refused connection")
            with carbonctx.track("after"):
                pass
        msgs = bmc_warnings(w)
        assert len(msgs) == 1 and "CERTIFICATE_VERIFY_FAILED" in msgs[0]
        assert not [e for e in srv.log if e[1] == "POST"], "no credentials were sent"


# ---------------------------------------------------------------------------- secrets


def test_credentials_appear_in_no_output(
    cert: tuple[Path, Path], machine: SimulatedMachine, tmp_path: Path
) -> None:
    out = tmp_path / "out.jsonl"
    with RedfishServer(cert) as srv:
        settings = configure(srv, machine, cert, output=str(out))
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            bmc_readings(2)
            m = region(0.3)
            srv.modes[ENV] = "503"
            rt = _process.runtime()
            assert rt.bmc is not None
            bmc = rt.bmc
            wait_for(lambda: bmc.failures >= 1, "a failure")
            with carbonctx.track("after"):
                pass
            described = json.dumps(rt.describe(), default=str)
            import io

            from carbonctx._cli.devices import _print_devices

            text = io.StringIO()
            _print_devices(rt.describe(), text)  # what `carbonctx devices` prints
            assert "Node power (BMC, Redfish)" in text.getvalue()
            described += text.getvalue()
            reprs = [repr(settings), str(settings), repr(rt.bmc), repr(rt.settings)]
            carbonctx.flush()
        texts = [out.read_text(), described, json.dumps(m.to_dict()), *reprs]
        texts += [str(x.message) for x in w]
        assert srv.issued, "a session was opened"
        for secret in (srv.password, srv.user, *srv.issued):
            for text in texts:
                assert secret not in text
        with pytest.raises(ConfigurationError) as e:
            carbonctx.configure(redfish_url="https://admin:hunter22@10.0.0.5")
        assert "hunter22" not in str(e.value) and "admin" not in str(e.value)
        # A query string is refused without being quoted: it may carry a token.
        with pytest.raises(ConfigurationError) as e:
            carbonctx.configure(redfish_url="https://10.0.0.5/redfish/v1?token=s3cr3t#x")
        assert "s3cr3t" not in str(e.value) and "query string" in str(e.value)
        assert "https://10.0.0.5/redfish/v1" in str(e.value)
        _process.reset()  # stops the BMC's thread, which closes its session
        assert srv.deleted, "the session was closed"


def test_transport_errors_never_hold_the_password(cert: tuple[Path, Path]) -> None:
    with RedfishServer(cert) as srv:
        t = Transport(srv.url, srv.user, srv.password, verify=str(cert[0]))
        srv.modes[ENV] = "401"
        p = RedfishPower(t)
        with pytest.raises(RedfishError) as e:
            p.read()
        assert e.value.status == 401
        assert srv.password not in str(e.value) and srv.user not in str(e.value)
        assert "no valid session" in str(e.value)  # @Message.ExtendedInfo, quoted
        assert srv.password not in repr(t) and srv.password not in repr(p)
        t.close()


# ---------------------------------------------------------------------------- the client


def test_sessions_are_reused_renewed_and_closed(cert: tuple[Path, Path]) -> None:
    with RedfishServer(cert, power=lambda t: 200.0) as srv:
        t = Transport(srv.url, srv.user, srv.password, verify=str(cert[0]))
        p = RedfishPower(t)
        assert p.read().watts == 200.0
        assert p.read().watts == 200.0
        assert len(srv.issued) == 1
        gets = [h for _, m, _, h in srv.log if m == "GET" and "x-auth-token" in h]
        assert gets and all("authorization" not in h for h in gets)
        srv.tokens.clear()  # the session expired on the BMC
        assert p.read().watts == 200.0
        assert len(srv.issued) == 2
        t.close()
        assert srv.deleted == ["/redfish/v1/SessionService/Sessions/1"]


def test_the_node_chassis_is_chosen_over_an_enclosure(cert: tuple[Path, Path]) -> None:
    with RedfishServer(cert, power=lambda t: 420.0) as srv:
        t = Transport(srv.url, srv.user, srv.password, verify=str(cert[0]))
        p = RedfishPower(t)
        r = p.read()
        assert r.watts == 420.0 and r.energy_j is not None
        assert p.locator is not None and p.locator.chassis == CHASSIS
        # A chassis named in the URL is the one read, whatever its type.
        t2 = Transport(srv.url, srv.user, srv.password, verify=str(cert[0]))
        p2 = RedfishPower(t2, "/redfish/v1/Chassis/Enclosure")
        assert p2.read().watts == 5000.0
        t.close()
        t2.close()


# ---------------------------------------------------------------------------- settings


def test_settings_are_checked_and_read_from_the_environment(
    cert: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    for bad in (
        {"redfish_url": "http://10.0.0.5"},
        {"redfish_url": "https://10.0.0.5/other"},
        {"redfish_url": "https://10.0.0.5", "redfish_period_s": 0.1},
        {"redfish_url": "https://10.0.0.5", "redfish_user": "root"},
        {"redfish_url": "https://10.0.0.5", "redfish_verify": "/no/such/ca.pem"},
    ):
        with pytest.raises(ConfigurationError):
            carbonctx.configure(**bad)
    monkeypatch.setenv("CARBONCTX_REDFISH_URL", "https://10.0.0.5/redfish/v1/Chassis/1")
    monkeypatch.setenv("CARBONCTX_REDFISH_USER", "operator7")
    monkeypatch.setenv("CARBONCTX_REDFISH_PASSWORD", "calvin-pw")
    monkeypatch.setenv("CARBONCTX_REDFISH_VERIFY", "false")
    monkeypatch.setenv("CARBONCTX_REDFISH_PERIOD", "10")
    s = _config.build(None, {})
    args = _config.redfish(s)
    assert args is not None
    assert args["url"] == "https://10.0.0.5/redfish/v1/Chassis/1"
    assert (args["user"], args["password"]) == ("operator7", "calvin-pw")
    assert args["verify"] is False and args["period_s"] == 10.0
    assert "calvin-pw" not in repr(s) and "operator7" not in repr(s)
    monkeypatch.setenv("CARBONCTX_REDFISH_VERIFY", str(cert[0]))
    assert _config.redfish(_config.build(None, {}))["verify"] == str(cert[0])  # type: ignore[index]
    assert _config.redfish(_config.build(None, {"redfish_url": None})) is None


def test_the_ca_bundle_may_be_given_as_a_path_object(cert: tuple[Path, Path]) -> None:
    # A pathlib.Path is a path, as for the other path settings; kept as text.
    s = carbonctx.configure(redfish_url="https://10.0.0.5", redfish_verify=cert[0])
    assert s.redfish_verify == str(cert[0])
    assert _config.redfish(s)["verify"] == str(cert[0])  # type: ignore[index]
    carbonctx.configure(redfish_url=None, redfish_verify=None)


# ---------------------------------------------------------------------------- a job


def test_one_process_per_node_reads_the_bmc_and_ranks_share_its_figure(
    cert: tuple[Path, Path], machine: SimulatedMachine, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    worker = str(Path(__file__).resolve().parent / "redfish_worker.py")
    with RedfishServer(cert, power=lambda t: 400.0) as srv:
        procs = []
        for rank in (0, 1):
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("CARBONCTX_", "SLURM_", "OMPI_", "PMI_"))
                and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
            }
            env.update(machine.env())
            env.update(
                CARBONCTX_ZONE="DE",
                CARBONCTX_CACHE_DIR=str(tmp_path / "cache"),
                CARBONCTX_NODE_DIR=str(tmp_path / "shm"),
                CARBONCTX_GPU="0",
                CARBONCTX_REDFISH_URL=srv.url,
                CARBONCTX_REDFISH_USER=srv.user,
                CARBONCTX_REDFISH_PASSWORD=srv.password,
                CARBONCTX_REDFISH_VERIFY=str(cert[0]),
                CARBONCTX_REDFISH_PERIOD="1",
                CARBONCTX_REDFISH_LAG_S="1",
                RANK=str(rank),
                WORLD_SIZE="2",
                LOCAL_RANK=str(rank),
                LOCAL_WORLD_SIZE="2",
                GROUP_RANK="0",
                TORCHELASTIC_RUN_ID="bmc-job",
                PYTHONUNBUFFERED="1",
            )
            procs.append(
                subprocess.Popen(
                    [sys.executable, worker, str(tmp_path)],
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        for p in procs:
            output, _ = p.communicate(timeout=WAIT_S)
            assert p.returncode == 0, output
        recs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
        # One process read the BMC, and the other never fetched. A loaded machine may see the
        # reader open a second session (its first timed out or expired): the sessions' readings
        # then follow one another, never run side by side.
        spans: dict[str, list[float]] = {}
        with srv.lock:
            for t, method, _path, headers in srv.log:
                tok = headers.get("x-auth-token")
                if method == "GET" and tok is not None:
                    spans.setdefault(tok, [t, t])[1] = t
        assert 1 <= len(srv.issued) <= 2, srv.issued
        ordered = sorted(spans.values())
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(ordered)), ordered
        assert sorted(r["role"] for r in recs) == ["follower", "owner"]
        for r in recs:
            # The owner's feed keeps the node's timeline 1 s behind: every rank's exit waits
            # for it, the follower's too (it reads the owner's feed, not its own).
            assert r["exit_lag_s"] == 1.0
            if r["role"] == "follower":
                assert r["feed_reads"] == 0 and r["readings"] == 0
            else:
                assert r["readings"] >= 2
            # Each rank reports half of the node's figure, which is the node's wall power.
            assert r["share"] == 0.5
            assert r["node_joules"] == pytest.approx(400.0 * r["duration_s"], rel=0.1)
            assert r["joules"] == pytest.approx(0.5 * r["node_joules"])


# ---------------------------------------------------------------------------- the power pushed


def test_the_energy_counter_is_preferred_unless_too_coarse() -> None:
    from carbonctx._bmc import BmcSource
    from carbonctx._bmc.redfish import Reading

    notes: list[str] = []
    b = BmcSource(
        "https://127.0.0.1:1", None, None, verify=True, period_s=1.0,
        note=lambda k, m: notes.append(m),
    )  # fmt: skip
    w = b._watts
    assert w(Reading(300.0, 1000.0), 0.0) == 300.0  # first sight: the power reading
    assert w(Reading(300.0, 1000.0), 1.0) == 300.0
    assert w(Reading(300.0, 1400.0), 2.0) == 300.0  # the first update only dates the counter
    assert w(Reading(300.0, 1800.0), 3.0) == pytest.approx(400.0)  # its mean power since
    assert w(Reading(300.0, 1800.0), 4.0) == pytest.approx(400.0)  # held until it moves
    assert w(Reading(300.0, 2600.0), 12.0) == 300.0  # 9 s for a step: too coarse
    assert w(Reading(None, 3400.0), 20.0) == pytest.approx(100.0)  # unless there is no other
    assert w(Reading(250.0, 10.0), 21.0) == 250.0  # a reset: the power reading again
    assert w(Reading(None, None), 22.0) is None
    assert not notes


def test_links_to_another_host_are_not_followed(cert: tuple[Path, Path]) -> None:
    with RedfishServer(cert) as srv:
        t = Transport(srv.url, srv.user, srv.password, verify=str(cert[0]))
        assert t.get(srv.url + "/redfish/v1/")["Id"] == "RootService"  # the same BMC: fine
        for elsewhere in ("https://198.51.100.7/redfish/v1/Chassis", "//198.51.100.7/x"):
            with pytest.raises(RedfishError, match="elsewhere"):
                t.get(elsewhere)
        assert not [e for e in srv.log if "198.51" in e[2]]
        t.close()


def test_interpreter_exit_is_not_held_by_a_trickling_bmc(
    cert: tuple[Path, Path], machine: SimulatedMachine, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    code = (
        "import carbonctx, time\n"
        "with carbonctx.track('r'):\n"
        "    time.sleep(0.1)\n"
        "print('done', flush=True)\n"
    )
    with RedfishServer(cert) as srv:
        srv.modes[ENV] = "trickle"
        srv.trickle_s = 0.2
        env = {k: v for k, v in os.environ.items() if not k.startswith("CARBONCTX_")}
        env.update(
            machine.env(),
            CARBONCTX_GPU="0",
            CARBONCTX_ZONE="DE",
            CARBONCTX_CACHE_DIR=str(tmp_path / "cache"),
            CARBONCTX_REDFISH_URL=srv.url,
            CARBONCTX_REDFISH_USER=srv.user,
            CARBONCTX_REDFISH_PASSWORD=srv.password,
            CARBONCTX_REDFISH_VERIFY=str(cert[0]),
            CARBONCTX_REDFISH_PERIOD="60",  # requests may take up to 5 s
        )
        p = subprocess.Popen(
            [sys.executable, "-c", code],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        out, _ = p.communicate(timeout=WAIT_S)
        assert p.returncode == 0, out
        assert "done" in out
        # The region waited at most one request (5 s) for the BMC's first answer and exit at
        # most STOP_WAIT_S for its thread: the process never waited for the trickle to end.
        assert srv.password not in out


def test_a_forked_child_leaves_the_bmc_to_its_parent(
    cert: tuple[Path, Path], machine: SimulatedMachine
) -> None:
    import multiprocessing

    with RedfishServer(cert, power=lambda t: 300.0) as srv:
        configure(srv, machine, cert)
        bmc_readings(1)
        ctx = multiprocessing.get_context("fork")
        q = ctx.SimpleQueue()
        p = ctx.Process(target=_child_region, args=(q,))
        with warnings.catch_warnings():
            # Forking a process with threads: what this test is about.
            warnings.simplefilter("ignore", DeprecationWarning)
            p.start()
        p.join(WAIT_S)
        assert p.exitcode == 0
        has_bmc, sources = q.get()
        assert not has_bmc and NODE not in sources
        assert len(srv.issued) == 1  # the parent's session only
        m = region(0.5)  # the parent still reads it
        assert m.by_source[NODE].joules == pytest.approx(300.0 * m.duration_s, rel=0.05)


def _child_region(q: Any) -> None:
    with carbonctx.track("in-child") as t:
        time.sleep(0.05)
    m = t.result()
    q.put((_process.runtime().bmc is not None, list(m.by_source)))


def test_run_totals_and_records_carry_the_nodes_figure(
    cert: tuple[Path, Path], machine: SimulatedMachine, tmp_path: Path
) -> None:
    with RedfishServer(cert, layout="power", power=lambda t: 300.0, sessions=False) as srv:
        out = tmp_path / "regions.jsonl"
        configure(srv, machine, cert, output=str(out))
        bmc_readings(2)
        m = region(0.5)
        assert m.node_j is not None
        d = m.to_dict()
        assert d["node_j"] == m.node_j and d["overhead_j"] is None  # a short region
        run = carbonctx.epochs(3, quiet=True, log_dir=str(tmp_path / "runs"), run_id="r1")
        for _ in run:
            time.sleep(0.3)
        eps = [e.measurement for e in run._rank_epochs]
        assert all(e is not None and e.node_j is not None for e in eps)
        a = run.actual
        assert a.node_j == pytest.approx(sum(e.node_j for e in eps if e is not None))
        assert a.node_j == pytest.approx(300.0 * sum(e.duration_s for e in eps if e), rel=0.1)
        assert a.overhead_j is None  # under a minute of epochs
        assert a.to_dict()["node_j"] == a.node_j
        total = carbonctx.job_total(run)
        assert total.ranks == 1 and total.node_j == pytest.approx(a.node_j)
        assert total.to_dict()["node_j"] == total.node_j
        assert carbonctx.job_total(m).node_j == m.node_j
        carbonctx.flush()
        _process.reset()
        # The region's record, written compact and read back, says the same.
        regions, _, bad = read_jsonl(str(out))
        assert bad == 0
        got = next(r for r in regions if r["id"] == m.id)
        assert list(got) == list(d)
        assert got["node_j"] == pytest.approx(d["node_j"], abs=1e-5)
        assert got["overhead_j"] is None
        logged = [
            json.loads(ln) for ln in (tmp_path / "runs" / "r1.jsonl").read_text().splitlines()
        ]
        final = next(r for r in logged if r.get("kind") == "run")
        assert final["actual"]["node_j"] == pytest.approx(a.node_j)
        assert all("node_j" in r for r in logged if r.get("kind") == "epoch")


def test_without_a_node_meter_records_and_totals_are_as_before(
    machine: SimulatedMachine, tmp_path: Path
) -> None:
    from carbonctx._runs.forecast import Epoch, actual_totals

    carbonctx.configure(**machine.settings())
    m = region(0.2)
    assert m.node_j is None
    assert "node_j" not in m.to_dict() and "overhead_j" not in m.to_dict()
    assert "node_j" not in carbonctx.job_total(m).to_dict()
    ep = Epoch(0, 0.0, 1.0, 1.0, 10.0, 0.0, None, m)
    totals = actual_totals([ep], 1, None)
    assert totals.node_j is None and "node_j" not in totals.to_dict()
    # With a node figure over more than a minute: the overhead too.
    long = [
        Epoch(k, 40.0 * k, 40.0 * (k + 1), 40.0, 4000.0, 0.0, None, None, 6000.0) for k in (0, 1)
    ]
    t = actual_totals(long, 2, None)
    assert (t.node_j, t.overhead_j) == (12000.0, 4000.0)
    # One epoch without the node's figure: no run figure rather than a partial one.
    assert actual_totals([*long, ep], 3, None).node_j is None


# ---------------------------------------------------------------------------- payload shapes
# Each test serves a documented payload shape verbatim (``RedfishServer.docs``) and reads it
# with the client, over HTTPS on 127.0.0.1.


def _reader(srv: RedfishServer, cert: tuple[Path, Path], **kw: Any) -> RedfishPower:
    return RedfishPower(Transport(srv.url, srv.user, srv.password, verify=str(cert[0])), **kw)


def _chassis(path: str, kind: str, **links: Any) -> dict[str, Any]:
    return {
        "@odata.id": path,
        "@odata.type": "#Chassis.v1_21_0.Chassis",
        "Id": path.rsplit("/", 1)[-1],
        "ChassisType": kind,
        "Status": {"State": "Enabled", "Health": "OK"},
        **links,
    }


def _collection(path: str, members: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "@odata.id": path,
        "Members@odata.count": len(members),
        "Members": [{"@odata.id": m} for m in members],
        **extra,
    }


def test_gpu_baseboard_modules_are_not_the_node(cert: tuple[Path, Path]) -> None:
    # An NVIDIA HGX board under a host BMC lists its boards and GPUs as chassis of type
    # ``Module`` (DMTF Chassis schema: "a small, typically removable, chassis or card that
    # contains devices for a particular subsystem or function"), each with its own
    # EnvironmentMetrics (``PowerWatts``, ``EnergyJoules``). Their figures are a part of the
    # node (and the GPUs' are NVML's too): the node is the RackMount chassis.
    c = "/redfish/v1/Chassis"
    board, gpu, node = f"{c}/HGX_Baseboard_0", f"{c}/HGX_GPU_SXM_1", f"{c}/DGX"
    with RedfishServer(cert) as srv:
        srv.docs[c] = _collection(c, [board, gpu, node])
        for path, watts in ((board, 5600.0), (gpu, 690.0), (node, 9100.0)):
            kind = "RackMount" if path == node else "Module"
            env = f"{path}/EnvironmentMetrics"
            srv.docs[path] = _chassis(path, kind, EnvironmentMetrics={"@odata.id": env})
            srv.docs[env] = {
                "@odata.id": env,
                "@odata.type": "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics",
                "PowerWatts": {"Reading": watts},
                "EnergyJoules": {"Reading": watts * 1000.0},
            }
        p = _reader(srv, cert)
        r = p.read()
        assert r.watts == 9100.0 and r.energy_j == 9100.0 * 1000.0
        assert p.locator is not None and p.locator.chassis == node
        # Without a node's chassis, no figure: a clear error that says how to name one.
        srv.docs[c] = _collection(c, [board, gpu])
        p2 = _reader(srv, cert)
        with pytest.raises(RedfishError, match=r"HGX_Baseboard_0 \(Module\).*Name a chassis") as e:
            p2.read()
        assert e.value.permanent
        p.t.close()
        p2.t.close()


def test_the_top_chassis_that_holds_the_system_is_the_node(cert: tuple[Path, Path]) -> None:
    # OpenBMC gives every inventory board a chassis, all ``RackMount``; the containment is in
    # ``Links.ContainedBy``/``Contains`` and the host in ``Links.ComputerSystems`` (Chassis
    # schema). A board inside the node's chassis, or one not tied to the system, is a part.
    c = "/redfish/v1/Chassis"
    riser, psu_bp, node = f"{c}/Riser_0", f"{c}/PSU_Backplane", f"{c}/chassis"
    system = {"ComputerSystems": [{"@odata.id": "/redfish/v1/Systems/system"}]}
    with RedfishServer(cert) as srv:
        srv.docs[c] = _collection(c, [psu_bp, riser, node])
        srv.docs[riser] = _chassis(
            riser, "RackMount", Links={**system, "ContainedBy": {"@odata.id": node}}
        )
        srv.docs[psu_bp] = _chassis(psu_bp, "RackMount", Links={})
        srv.docs[node] = _chassis(
            node, "RackMount", Links={**system, "Contains": [{"@odata.id": riser}]}
        )
        for path, watts in ((riser, 35.0), (psu_bp, 12.0), (node, 640.0)):
            srv.docs[path]["Sensors"] = {"@odata.id": f"{path}/Sensors"}
            s = f"{path}/Sensors/power_total_power"
            srv.docs[f"{path}/Sensors"] = _collection(f"{path}/Sensors", [s])
            srv.docs[s] = {
                "@odata.id": s,
                "@odata.type": "#Sensor.v1_2_0.Sensor",
                "ReadingType": "Power",
                "ReadingUnits": "W",
                "Reading": watts,
            }
        p = _reader(srv, cert)
        assert p.read().watts == 640.0
        assert p.locator is not None and p.locator.chassis == node
        p.t.close()


def test_environment_metrics_energy_joules_before_kwh(cert: tuple[Path, Path]) -> None:
    # EnvironmentMetrics v1.2 (Redfish 2021.2) adds ``EnergyJoules``, finer than ``EnergykWh``
    # (a kWh counter moves every 3.6 MJ at its stated precision).
    with RedfishServer(cert) as srv:
        srv.docs[ENV] = {
            "@odata.id": ENV,
            "@odata.type": "#EnvironmentMetrics.v1_3_0.EnvironmentMetrics",
            "PowerWatts": {"Reading": 512.5},
            "EnergykWh": {"Reading": 1234.0},
            "EnergyJoules": {"Reading": 4442400123.0},
        }
        p = _reader(srv, cert)
        assert p.read() == Reading(512.5, 4442400123.0, energy_step_j=1.0)
        assert p.locator is not None and "EnergyJoules" in p.locator.what
        # A BMC that only has joules, and a power reading that is null this time.
        srv.docs[ENV] = {"@odata.id": ENV, "EnergyJoules": {"Reading": 5.0e9}, "PowerWatts": {}}
        assert p.read().energy_j == 5.0e9
        p.t.close()


def test_an_absent_power_supply_is_left_out(cert: tuple[Path, Path]) -> None:
    # PowerSubsystem: an empty bay is a PowerSupply whose ``Status.State`` is ``Absent``
    # (Resource schema) and whose metrics are null; the present supplies are the node's draw.
    sub = f"{CHASSIS}/PowerSubsystem/PowerSupplies"
    with RedfishServer(cert, layout="subsystem", power=lambda t: 500.0) as srv:
        srv.docs[sub] = _collection(sub, [f"{sub}/0", f"{sub}/1", f"{sub}/2"])
        srv.docs[f"{sub}/2"] = {
            "@odata.id": f"{sub}/2",
            "Id": "2",
            "Status": {"State": "Absent"},
            "Metrics": {"@odata.id": f"{sub}/2/Metrics"},
        }
        srv.docs[f"{sub}/2/Metrics"] = {"InputPowerWatts": {"Reading": None}}
        p = _reader(srv, cert)
        assert p.read().watts == pytest.approx(500.0)
        assert p.locator is not None and "2 power supplies" in p.locator.what
        p.t.close()


def test_legacy_power_supplies_and_readings_sent_as_strings(cert: tuple[Path, Path]) -> None:
    # Power v1 without PowerControl (some BMCs): ``PowerSupplies[].PowerInputWatts`` is each
    # supply's draw from the wall (``LastPowerOutputWatts`` is what it gives the node, less its
    # losses: not used). Some firmware sends numbers as strings.
    power = f"{CHASSIS}/Power"
    with RedfishServer(cert, layout="power") as srv:
        srv.docs[power] = {
            "@odata.id": power,
            "@odata.type": "#Power.v1_5_0.Power",
            "PowerSupplies": [
                {"MemberId": "0", "PowerInputWatts": 210, "LastPowerOutputWatts": 190},
                {"MemberId": "1", "PowerInputWatts": "190.5", "LastPowerOutputWatts": 170},
                {"MemberId": "2", "PowerInputWatts": None, "Status": {"State": "Absent"}},
            ],
        }
        p = _reader(srv, cert)
        assert p.read().watts == pytest.approx(400.5)
        # A PowerControl reading as a string is read too; text that is no number is not.
        srv.docs[power] = {"PowerControl": [{"PowerConsumedWatts": " 333 "}]}
        p2 = _reader(srv, cert)
        assert p2.read().watts == 333.0
        srv.docs[power] = {"PowerControl": [{"PowerConsumedWatts": "N/A"}]}
        assert p2.read().watts is None
        p.t.close()
        p2.t.close()


def test_averaged_power_says_it_lags(cert: tuple[Path, Path]) -> None:
    # PowerMetrics.AverageConsumedWatts is a mean over the last ``IntervalInMin`` minutes
    # (Power schema): used only without PowerConsumedWatts, and labelled as lagging.
    power = f"{CHASSIS}/Power"
    with RedfishServer(cert, layout="power") as srv:
        srv.docs[power] = {
            "PowerControl": [
                {"PowerMetrics": {"IntervalInMin": 20, "AverageConsumedWatts": 380}},
            ]
        }
        p = _reader(srv, cert)
        assert p.read().watts == 380.0
        assert p.locator is not None and p.locator.kind == "power-average"
        assert "last 20 min" in p.locator.what and "lags" in p.locator.what
        p.t.close()


def test_sensor_pages_are_followed_and_the_total_comes_first(cert: tuple[Path, Path]) -> None:
    # A SensorCollection may be paged (``Members@odata.nextLink``, Redfish spec 9.4.3); the
    # chassis's total may come after many per-part sensors (OpenBMC: power_total_power).
    sens = f"{CHASSIS}/Sensors"
    parts = [f"{sens}/power_PSU{i}_Input_Power" for i in range(40)]
    with RedfishServer(cert, layout="sensors") as srv:
        srv.docs[sens] = _collection(
            sens, parts[:20], **{"Members@odata.nextLink": f"{sens}?$skip=20"}
        )
        srv.docs[f"{sens}?$skip=20"] = _collection(
            sens, [*parts[20:], f"{sens}/power_total_power", f"{sens}/energy_total_kwh"]
        )
        for s in parts:
            srv.docs[s] = {"ReadingType": "Power", "PhysicalContext": "PowerSupply", "Reading": 9}
        srv.docs[f"{sens}/power_total_power"] = {
            "ReadingType": "Power",
            "ReadingUnits": "kW",
            "PhysicalContext": "Chassis",
            "Reading": 0.75,
        }
        srv.docs[f"{sens}/energy_total_kwh"] = {
            "ReadingType": "EnergykWh",
            "ReadingUnits": "kW.h",
            "Reading": 2.0,
        }
        p = _reader(srv, cert)
        assert p.read() == Reading(750.0, 2.0 * 3.6e6, energy_step_j=3.6e6)  # 1 kWh steps shown
        assert len(srv.requests(f"{sens}/power_PSU0_Input_Power")) == 0  # totals were enough
        p.t.close()


def test_refused_credentials_without_a_session_say_what_to_do(cert: tuple[Path, Path]) -> None:
    # No SessionService (404): HTTP Basic on every request; a 401 then is final, said once.
    with RedfishServer(cert, sessions=False) as srv:
        t = Transport(srv.url, srv.user, "wrong-password", verify=str(cert[0]))
        with pytest.raises(RedfishError, match="redfish_password") as e:
            RedfishPower(t).read()
        assert e.value.permanent and e.value.status == 401
        t.close()
        t2 = Transport(srv.url, None, None, verify=str(cert[0]))
        with pytest.raises(RedfishError, match="set redfish_user and redfish_password") as e:
            RedfishPower(t2).read()
        assert e.value.permanent
        t2.close()


def test_many_chassis_in_one_expanded_request_or_one_by_one(cert: tuple[Path, Path]) -> None:
    # A GPU server's BMC lists a chassis per GPU, switch and security chip (``Module``,
    # ``Component``) and the node's among them, here after 30 others. Where the service root
    # says ``ProtocolFeaturesSupported.ExpandQuery.NoLinks`` (Redfish spec 7.3, ``$expand=.``),
    # one request gives them all; a service that ignores ``$expand`` answers bare links, and
    # each chassis is then read on its own.
    c = "/redfish/v1/Chassis"
    parts = [f"{c}/HGX_GPU_SXM_{i}" for i in range(1, 9)]
    parts += [f"{c}/HGX_ERoT_{n}_{i}" for n in ("GPU", "NVSwitch", "PCIe") for i in range(8)]
    node = f"{c}/System_0"
    with RedfishServer(cert) as srv:
        for path in parts:
            kind = "Module" if "GPU_SXM" in path else "Component"
            srv.docs[path] = _chassis(path, kind)
        srv.docs[node] = _chassis(node, "RackMount", Power={"@odata.id": f"{node}/Power"})
        srv.docs[f"{node}/Power"] = {"PowerControl": [{"PowerConsumedWatts": 6100}]}
        srv.docs[c] = _collection(c, [*parts, node])
        srv.modes[parts[3]] = "404"  # listed, yet not there: skipped
        p = _reader(srv, cert)
        assert p.read().watts == 6100.0
        assert len(srv.requests(parts[0])) == 1  # one by one
        root = srv.resource("/redfish/v1")
        assert root is not None
        srv.docs["/redfish/v1"] = {
            **root,
            "ProtocolFeaturesSupported": {
                "ExpandQuery": {"ExpandAll": True, "Levels": True, "MaxLevels": 6, "NoLinks": True}
            },
        }
        p2 = _reader(srv, cert)
        assert p2.read().watts == 6100.0  # $expand ignored (bare links): one by one again
        assert len(srv.requests(parts[0])) == 2
        expanded = {**srv.docs[c], "Members": [srv.docs[m] for m in [*parts, node]]}
        srv.docs[f"{c}?$expand=.($levels=1)"] = expanded
        p3 = _reader(srv, cert)
        assert p3.read().watts == 6100.0
        assert len(srv.requests(parts[0])) == 2  # not read on its own this time
        assert p3.locator is not None and p3.locator.chassis == node
        for r in (p, p2, p3):
            r.t.close()


def test_a_rack_typed_chassis_that_holds_the_one_system_is_the_node(
    cert: tuple[Path, Path],
) -> None:
    # Cisco's CIMC (UCS C240 M5) lists one chassis for the rack server, ``ChassisType``
    # ``Rack``, holding its one computer system (``Links.ComputerSystems``: the systems
    # "directly and wholly contained", Chassis schema) with the legacy Power resource.
    c = "/redfish/v1/Chassis"
    node = f"{c}/1"
    with RedfishServer(cert) as srv:
        srv.docs[c] = _collection(c, [node])
        srv.docs[node] = _chassis(
            node,
            "Rack",
            Name="Computer System Chassis",
            Model="UCS C240 M5SX",
            Links={
                "ComputerSystems": [{"@odata.id": "/redfish/v1/Systems/WZP23450C8K"}],
                "ManagedBy": [{"@odata.id": "/redfish/v1/Managers/CIMC"}],
                "PoweredBy": [{"@odata.id": f"{node}/Power"}],
            },
            Power={"@odata.id": f"{node}/Power"},
        )
        srv.docs[f"{node}/Power"] = {
            "@odata.id": f"{node}/Power",
            "PowerControl": [{"MemberId": "0", "PowerConsumedWatts": 324}],
        }
        p = _reader(srv, cert)
        assert p.read().watts == 324.0
        assert p.locator is not None and p.locator.chassis == node
        # A rack that holds two systems (or none) holds more than one node: not read.
        for systems in ([], ["/redfish/v1/Systems/a", "/redfish/v1/Systems/b"]):
            srv.docs[node]["Links"]["ComputerSystems"] = [{"@odata.id": s} for s in systems]
            p2 = _reader(srv, cert)
            with pytest.raises(RedfishError, match=r"Chassis/1 \(Rack\)"):
                p2.read()
            p2.t.close()
        # A chassis of a node's type comes first.
        srv.docs[node]["Links"]["ComputerSystems"] = [{"@odata.id": "/redfish/v1/Systems/1"}]
        mount = f"{c}/Sled"
        srv.docs[c] = _collection(c, [node, mount])
        srv.docs[mount] = _chassis(mount, "Sled", Power={"@odata.id": f"{mount}/Power"})
        srv.docs[f"{mount}/Power"] = {"PowerControl": [{"PowerConsumedWatts": 280}]}
        p3 = _reader(srv, cert)
        assert p3.read().watts == 280.0
        p.t.close()
        p3.t.close()


def test_the_search_is_bounded_and_stops_when_asked(cert: tuple[Path, Path]) -> None:
    # 64 chassis of a node's type, none with a reading: the search stops when its owner says
    # so (at its next request), and never runs past its time bound (here none at all).
    c = "/redfish/v1/Chassis"
    many = [f"{c}/Node_{i}" for i in range(64)]
    with RedfishServer(cert) as srv:
        srv.docs[c] = _collection(c, many)
        for path in many:
            srv.docs[path] = _chassis(path, "RackMount", Sensors={"@odata.id": f"{path}/S"})
            srv.docs[f"{path}/S"] = _collection(f"{path}/S", [])

        def stopped() -> bool:
            return len(srv.requests(many[5])) > 0

        p = _reader(srv, cert, stopped=stopped)
        with pytest.raises(RedfishError, match="stopped") as e:
            p.read()
        assert not e.value.permanent
        assert sum(len(srv.requests(m)) for m in many) == 6  # not all 64
        p2 = _reader(srv, cert, search_s=0.0)
        with pytest.raises(RedfishError, match=r"within 0 s.*Name the chassis") as e:
            p2.read()
        assert not e.value.permanent  # a slow BMC now may be quicker later
        assert len(srv.requests(c)) == 1  # the first search's only
        p3 = _reader(srv, cert)  # unbounded enough: looks at all 64, then says what it saw
        with pytest.raises(RedfishError, match="no power reading"):
            p3.read()
        assert sum(len(srv.requests(m)) for m in many) == 6 + 64
        for r in (p, p2, p3):
            r.t.close()


def test_collection_pages_that_loop_are_read_once(cert: tuple[Path, Path]) -> None:
    # ``Members@odata.nextLink`` (Redfish spec, paging) of a faulty service that points back
    # to the first page: each page and each member is read once.
    c = "/redfish/v1/Chassis"
    board, node = f"{c}/Board", f"{c}/Node"
    with RedfishServer(cert) as srv:
        srv.docs[c] = _collection(c, [board], **{"Members@odata.nextLink": f"{c}?$skip=1"})
        srv.docs[f"{c}?$skip=1"] = _collection(c, [board, node], **{"Members@odata.nextLink": c})
        srv.docs[board] = _chassis(board, "RackMount", Sensors={"@odata.id": f"{board}/S"})
        srv.docs[f"{board}/S"] = _collection(f"{board}/S", [])
        srv.docs[node] = _chassis(node, "RackMount", Power={"@odata.id": f"{node}/Power"})
        srv.docs[f"{node}/Power"] = {"PowerControl": [{"PowerConsumedWatts": 410}]}
        p = _reader(srv, cert)
        assert p.read().watts == 410.0
        assert len(srv.requests(c)) == len(srv.requests(f"{c}?$skip=1")) == 1
        assert len(srv.requests(board)) == len(srv.requests(f"{board}/S")) == 1
        p.t.close()


def test_an_energy_sensor_in_watt_hours_is_read(cert: tuple[Path, Path]) -> None:
    # Sensor ``ReadingType`` ``EnergyWh`` (Sensor schema: device-level energy, ``ReadingUnits``
    # ``W.h``) beside ``EnergyJoules`` and ``EnergykWh``.
    sens = f"{CHASSIS}/Sensors"
    with RedfishServer(cert, layout="sensors") as srv:
        srv.docs[f"{sens}/TotalEnergy"] = {
            "@odata.id": f"{sens}/TotalEnergy",
            "ReadingType": "EnergyWh",
            "ReadingUnits": "W.h",
            "PhysicalContext": "Chassis",
            "Reading": 1500.0,
        }
        srv.docs[f"{sens}/TotalPower"] = {"ReadingType": "Power", "Reading": 420.0}
        p = _reader(srv, cert)
        assert p.read() == Reading(420.0, 1500.0 * 3600.0, energy_step_j=100.0 * 3600.0)
        p.t.close()


def test_stopping_ends_a_search_in_flight_without_a_warning(
    cert: tuple[Path, Path], machine: SimulatedMachine
) -> None:
    # configure() or exit stops the thread while it is still looking through 64 chassis: it
    # leaves after the request in flight instead of reading the rest, and says nothing.
    c = "/redfish/v1/Chassis"
    many = [f"{c}/Node_{i}" for i in range(64)]
    with RedfishServer(cert) as srv:
        srv.docs[c] = _collection(c, many)
        for path in many:
            srv.docs[path] = _chassis(path, "RackMount")

        def slow(doc: dict[str, Any], s: float) -> Any:
            return lambda t: (time.sleep(s), doc)[1]  # answers, within the 5 s deadline

        # The first region waits at most 5 s for a first answer: the search is still going.
        for path in many[:6]:
            srv.docs[path] = slow(srv.docs[path], 1.0)
        srv.docs[many[6]] = slow(srv.docs[many[6]], 3.0)
        configure(srv, machine, cert, redfish_period_s=5.0)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            with carbonctx.track("r"):
                pass
            bmc = _process.runtime().bmc
            assert bmc is not None
            wait_for(lambda: srv.requests(many[6]), "the search reaching the slow chassis")
            bmc.stop()
            thread = bmc._thread
            assert thread is not None
            wait_for(lambda: not thread.is_alive(), "the thread's end")
        assert not any(srv.requests(m) for m in many[7:])
        assert bmc_warnings(w) == []


def test_past_64_chassis_the_one_the_system_names_is_read(cert: tuple[Path, Path]) -> None:
    # A GPU server's BMC may list more chassis than are read one by one (a chassis per GPU,
    # switch, retimer and their security chips), the node's after them (collections are often
    # sorted by name). The ComputerSystem's ``Links.Chassis`` names the chassis that holds it.
    c = "/redfish/v1/Chassis"
    parts = [f"{c}/HGX_{kind}_{i}" for kind in ("ERoT", "GPU", "PCIeRetimer") for i in range(25)]
    node = f"{c}/System_0"
    with RedfishServer(cert) as srv:
        srv.docs[c] = _collection(c, [*parts, node])
        for path in parts:
            srv.docs[path] = _chassis(path, "Component" if "ERoT" in path else "Module")
        srv.docs[node] = _chassis(node, "RackMount", Power={"@odata.id": f"{node}/Power"})
        srv.docs[f"{node}/Power"] = {"PowerControl": [{"PowerConsumedWatts": 5200}]}
        root = srv.resource("/redfish/v1")
        assert root is not None
        srv.docs["/redfish/v1"] = {**root, "Systems": {"@odata.id": "/redfish/v1/Systems"}}
        srv.docs["/redfish/v1/Systems"] = _collection(
            "/redfish/v1/Systems", ["/redfish/v1/Systems/System_0"]
        )
        srv.docs["/redfish/v1/Systems/System_0"] = {
            "@odata.id": "/redfish/v1/Systems/System_0",
            "Links": {"Chassis": [{"@odata.id": node}]},
        }
        p = _reader(srv, cert)
        assert p.read().watts == 5200.0
        assert sum(len(srv.requests(m)) for m in parts) <= 63  # read one by one: at most 64
        # Expanded in one answer, all of them are looked at.
        srv.docs["/redfish/v1"]["ProtocolFeaturesSupported"] = {"ExpandQuery": {"NoLinks": True}}
        srv.docs[f"{c}?$expand=."] = {
            **srv.docs[c],
            "Members": [srv.docs[m] for m in [*parts, node]],
        }
        del srv.docs["/redfish/v1"]["Systems"]
        p2 = _reader(srv, cert)
        assert p2.read().watts == 5200.0
        p.t.close()
        p2.t.close()
