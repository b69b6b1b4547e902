"""How a provider's address and answer can go wrong on the way: redirects (RFC 9110 section
15.4: followed within one host, refused to another, bounded), an answer cut after its headers,
and an HTML page where JSON was due (a proxy's or a portal's), against the local server."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from carbonctx._carbon.service import IntensityService
from carbonctx.errors import IntensityWarning
from intensity_server import FakeClock, FakeServer, service

TOKEN = "em-T0ken-7f3a9c"
CLIENT_TIMEOUT = 1.0


def em(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> IntensityService:
    return service(
        server, tmp_path, client, clock, zone="DE", providers=["electricitymaps"],
        electricitymaps_token=TOKEN,
    )  # fmt: skip


def test_a_redirect_within_the_host_is_followed(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.value = lambda provider, t: 210.0
    server.modes["/v3/"] = "redirect"
    s = em(server, tmp_path, client, clock)
    s.refresh(wait=True)
    cur = s.current()
    assert (cur.source, cur.g_per_kwh) == ("live", 210.0)
    # each endpoint asked twice: at its address, then where the 301 sent it, query and token kept
    latest = [r for r in server.requests if r.path == "/v3/carbon-intensity/latest"]
    assert len(latest) == 2
    assert all(r.query["zone"] == ["DE"] and r.headers["auth-token"] == TOKEN for r in latest)
    assert s._series["recent"].failure is None
    s.close()


def test_a_redirect_to_another_host_is_refused_and_says_where(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # the token is for the configured host: a redirect elsewhere is not followed with it
    server.modes["/v3/"] = "redirect-away"
    s = em(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning) as rec:
        s.refresh(wait=True)
    said = " ".join(str(w.message) for w in rec)
    port = server.url.rsplit(":", 1)[1]
    where = f"(http://localhost:{port}/v3/carbon-intensity/latest)"
    assert f"moved to another host, port or scheme {where}" in said
    assert "zone=" not in said and TOKEN not in said  # the query (or a token in it) not quoted
    assert server.count("/v3/carbon-intensity/latest") == 1
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "http"
    assert s.current().source == "table"
    s.close()


def test_a_redirect_loop_ends_after_three_hops(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/v3/"] = "redirect-loop"
    s = em(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="more than 3 redirects in a row"):
        s.refresh(wait=True)
    assert server.count("/v3/carbon-intensity/latest") == 4  # the request and three hops
    assert s.current().source == "table"
    s.close()


def test_the_deadline_counts_across_redirects(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # each hop answers in 0.4 s, within any one read's timeout: the 1 s is for all of them
    server.modes["/v3/"] = "redirect-loop-slow"
    s = service(
        server, tmp_path, client, clock, zone="DE", providers=["electricitymaps"],
        electricitymaps_token=TOKEN, deadline_s=1.0,
    )  # fmt: skip
    t = time.monotonic()
    with pytest.warns(IntensityWarning, match="no complete answer within 1 s|timed out"):
        s.refresh(wait=True)
    assert time.monotonic() - t < 1.0 + 0.5 + 0.5 + 0.5  # generous: one read's timeout over
    assert server.count("/v3/carbon-intensity/latest") < 4
    s.close()


def test_an_answer_cut_after_its_headers_is_said_to_be_cut(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # the provider was reached: "could not connect" would send the user to check the network
    server.modes["/v3/"] = "cut"
    s = em(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning) as rec:
        s.refresh(wait=True)
    said = " ".join(str(w.message) for w in rec)
    assert "the answer was cut" in said and "could not connect" not in said
    s.close()


def test_an_html_page_where_json_was_due_is_named(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # a proxy's or a captive portal's page, sent with 200
    server.modes["/v3/"] = "html"
    s = em(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning) as rec:
        s.refresh(wait=True)
    said = " ".join(str(w.message) for w in rec)
    assert "an HTML page, not JSON" in said and "Sign in to the network" in said
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "malformed"
    assert s.current().source == "table"
    s.close()


def test_a_gateway_error_page_is_quoted_by_its_title(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    server.modes["/v3/"] = "html-502"
    s = em(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match='HTTP 502 server error: "502 Bad Gateway"'):
        s.refresh(wait=True)
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "server"
    s.close()


def test_a_compressed_answer_that_ends_early_is_said_to_be_cut(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # A proxy that shortens a gzip body (and its Content-Length): what inflates is a part.
    server.modes["/v3/"] = "gzip-cut"
    s = em(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="the compressed answer ends early"):
        s.refresh(wait=True)
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "malformed"
    assert s.current().source == "table"
    s.close()


def test_a_redirect_to_https_on_another_port_is_refused_with_the_login(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # WattTime's login sends basic auth: http to https is an upgrade only on the default ports
    # (80 to 443); the same machine on another port may be another service, and gets nothing.
    server.modes["/login"] = "redirect-https-port"
    s = service(
        server, tmp_path, client, clock, zone="US-CAL-CISO", providers=["watttime"],
        signal="marginal", watttime_region="CAISO_NORTH", watttime_username="wt-user",
        watttime_password="wt-Pa55word",
    )  # fmt: skip
    with pytest.warns(IntensityWarning) as rec:
        s.refresh(wait=True)
    said = " ".join(str(w.message) for w in rec)
    assert "moved to another host, port or scheme (https://127.0.0.1:1/login)" in said
    assert "could not connect" not in said and "wt-Pa55word" not in said
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "http"
    s.close()


def test_a_redirect_message_stays_on_one_short_line(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # the Location's path is the server's text: a %0A in it must not break the warning, and
    # 3000 characters of it must not fill the screen
    server.modes["/v3/"] = "redirect-odd"
    s = em(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning) as rec:
        s.refresh(wait=True)
    (said,) = {str(w.message) for w in rec}
    assert "moved to another host" in said and "/%0Aa-second-line" in said
    assert "\n" not in said and len(said) < 800
    assert TOKEN not in said and "zone=" not in said
    s.close()


def test_a_redirect_to_an_unreadable_host_name_is_the_http_error_it_came_with(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # "xn--zz" is no valid IDNA label: said as the provider's answer, not as a bug of ours
    server.modes["/v3/"] = "redirect-badname"
    s = em(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning, match="redirects to an address that cannot be read"):
        s.refresh(wait=True)
    failure = s._series["recent"].failure
    assert failure is not None and failure.kind == "http"
    assert s.current().source == "table"
    s.close()


def test_an_html_page_title_is_read_as_html_reads_it(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # a byte order mark before the page, and character references in the title ("&amp;", and
    # "&#10;", a line break that must not reach the warning)
    server.modes["/v3/"] = "html-bom"
    s = em(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning) as rec:
        s.refresh(wait=True)
    said = " ".join(str(w.message) for w in rec)
    assert 'an HTML page, not JSON: "Sign in & accept the terms"' in said
    s.close()


def test_a_redirect_to_no_url_is_an_answer_that_could_not_be_read(
    server: FakeServer, tmp_path: Path, client: httpx.Client, clock: FakeClock
) -> None:
    # the provider answered: "could not connect" would send the user to check the network
    server.modes["/v3/"] = "redirect-badurl"
    s = em(server, tmp_path, client, clock)
    with pytest.warns(IntensityWarning) as rec:
        s.refresh(wait=True)
    said = " ".join(str(w.message) for w in rec)
    assert "the answer could not be read as HTTP" in said and "could not connect" not in said
    assert TOKEN not in said
    assert s.current().source == "table"
    s.close()
