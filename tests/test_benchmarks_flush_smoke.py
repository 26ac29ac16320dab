"""The flush-latency benchmark runs end to end (quick mode); no timing is asserted."""

from __future__ import annotations

import re
import socket
import sys
import threading
from collections.abc import Iterator

import pytest

from benchmarks import flush_latency

pytestmark = pytest.mark.e2e


def _rows(report: str) -> list[str]:
    return [line for line in report.splitlines() if line.startswith("| ")]


@pytest.mark.timeout(90)
def test_flush_latency_quick_run_reports_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_QUICK", "1")
    # With the opt-in control (e) too: the default run differs only by its
    # phase list (see tests/test_benchmarks_start_control.py).
    monkeypatch.setenv("BENCH_START_CONTROL", "1")
    report = flush_latency.run()
    rows = _rows(report)

    # Part 1: every step of building a full batch, and the baseline.
    assert "### Building and compressing a full batch (1000 keys)" in report
    for label in flush_latency.BUILD_LABELS:
        assert any(row.startswith(f"| {label} |") for row in rows), label

    # Part 2: a row per server and phase, every one of them measured.
    for server in flush_latency.SERVER_LABELS.values():
        for key, phase in flush_latency.ALL_PHASE_LABELS.items():
            matching = [row for row in rows if row.startswith(f"| {server} | {phase} |")]
            assert len(matching) == 1, (server, phase)
            row = matching[0]
            counts = re.search(r"\| (\d+) / (\d+) \((\d+)\) \| (\d+) \|", row)
            assert counts is not None, row
            during, apart = int(counts[1]), int(counts[2])
            assert during > 0 and apart > 0, row  # both kinds of time were sampled
            assert int(counts[4]) == 0, row  # no request failed
            if key == "quiet":
                assert "(calibration: empty windows)" in row, row
            if key in ("floor", "start"):
                assert "(control)" in row, row
    # Verdicts on flushing and minting only, each with the calibration beside it.
    verdicts = [row for row in rows if "**PASS**" in row or "**MISS**" in row]
    assert len(verdicts) == 2 * 2  # each server, while flushing and while minting
    assert all(re.search(r"; null \d+\.\d\dx", row) for row in verdicts), verdicts
    # The open loop ran at a rate taken from this run, and says whether it kept up.
    assert re.search(r"ASGI \d+ req/s, WSGI \d+ req/s", report)
    assert re.search(r"The load generator used \d+% of a core while timed", report)
    for row in rows[-10:]:
        assert re.search(r"\| \d+\.\d\d \(\d+\) \|$", row), row

    # Every flush reached the collector stand-in, and the middlewares measured the routes.
    assert "GET /items/{item_id} 200" in report
    assert "GET /items/<int:item_id> 200" in report
    # The flushing thread ran at the flusher thread's own priority.
    if sys.platform.startswith("linux"):
        assert "- (b): windows on a thread at the flusher thread's priority (nice 19;" in report
    flush_lines = [line for line in report.splitlines() if line.startswith("- flushes in (b)")]
    assert len(flush_lines) == 2  # each server
    for line in flush_lines:
        found = re.search(r": (\d+) flushes, (\d+)/(\d+) delivered", line)
        assert found is not None, line
        assert int(found[1]) >= 1 and found[2] == found[3] == found[1], line

    # Stamps were minted in every (c) phase.
    stamp_lines = [line for line in report.splitlines() if line.startswith("- stamps in (c)")]
    assert len(stamp_lines) == 2  # each server
    for line in stamp_lines:
        found = re.search(r": (\d+) stamps;", line)
        assert found is not None, line
        assert int(found[1]) >= 1, line

    # Control (e) started a minting child in each of its windows.
    start_lines = [line for line in report.splitlines() if line.startswith("- starts in (e)")]
    assert len(start_lines) == 2  # each server
    for line in start_lines:
        found = re.search(r": (\d+) starts; the start itself .* median (\d+\.\d) ms wall", line)
        assert found is not None, line
        assert int(found[1]) >= 1 and float(found[2]) > 0, line

    # The control's child really ran at idle priority (Linux names the policy).
    control = next(line for line in report.splitlines() if line.startswith("- (d)"))
    if sys.platform.startswith("linux"):
        assert "policy seen: SCHED_IDLE)" in control, control


# -- the load generator's connection ---------------------------------------------------


@pytest.fixture
def servers() -> Iterator[dict[str, str]]:
    """The benchmark's own two servers, serving its own two apps."""
    from benchmarks.overhead import flask_app, starlette_app

    asgi = flush_latency.UvicornThread(starlette_app())
    wsgi = flush_latency.WerkzeugThread(flask_app())
    asgi.start()
    wsgi.start()
    try:
        yield {"asgi": asgi.url, "wsgi": wsgi.url}
    finally:
        asgi.stop()
        wsgi.stop()


def _connection(url: str, path: str) -> flush_latency.RawConnection:
    host, port = url.removeprefix("http://").split(":")
    return flush_latency.RawConnection(host, int(port), path)


@pytest.mark.timeout(30)
def test_a_raw_connection_is_kept_alive_under_uvicorn(servers: dict[str, str]) -> None:
    connection = _connection(servers["asgi"], "/items/42")
    assert connection.get() == 200
    first = connection.sock
    assert first is not None
    assert [connection.get() for _ in range(20)] == [200] * 20
    assert connection.sock is first  # one connection for every request
    assert _connection(servers["asgi"], "/nowhere").get() == 404
    connection.close()


@pytest.mark.timeout(30)
def test_a_raw_connection_reconnects_when_werkzeug_closes_it(servers: dict[str, str]) -> None:
    connection = _connection(servers["wsgi"], "/items/42")
    assert [connection.get() for _ in range(10)] == [200] * 10
    assert connection.sock is None  # Werkzeug said Connection: close, every time


@pytest.mark.timeout(30)
def test_a_connection_closed_while_idle_is_opened_again_for_the_same_request() -> None:
    """A server that drops a kept-alive connection between requests (uvicorn
    does after 5 s idle) costs the next request a reconnect, not an error."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    answered: list[int] = []

    def serve() -> None:
        for _ in range(2):
            peer, _address = listener.accept()
            with peer:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += peer.recv(4096)
                peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                answered.append(len(request))
            # closed without Connection: close, as an idle timeout does

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    connection = flush_latency.RawConnection("127.0.0.1", port, "/")
    assert connection.get() == 200
    assert connection.sock is not None  # kept: the answer did not say close
    thread.join(0.5)  # the server has closed its end by now
    assert connection.get() == 200  # sent again on a new connection
    thread.join(5)
    listener.close()
    connection.close()
    assert len(answered) == 2


@pytest.mark.timeout(30)
def test_a_broken_answer_is_an_error_not_a_status() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        peer, _address = listener.accept()
        with peer:
            peer.recv(4096)
            peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    connection = flush_latency.RawConnection("127.0.0.1", port, "/")
    with pytest.raises(ConnectionError, match="inside its body"):
        connection.get()
    assert connection.sock is None
    thread.join(5)
    listener.close()
