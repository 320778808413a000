"""`wquant sweep` refuses bad input with one line and writes nothing: malformed scheduler addresses, servers
that are not Dask schedulers (garbage, silence, closed ports), empty grids, an --out that is a file."""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from hostile.harness import Hostile, run_refused
from wquant.sweep import scheduler as scheduler_module

THEORY = '[sweep]\nkind = "theory"\n[theory]\nbits = [2]\n'


def _sweep(scheduler: str) -> tuple[str, ...]:
    return ("sweep", "{tmp}/grid.toml", "--out", "{tmp}/out", "--scheduler", scheduler)


RUN = ("sweep", "{tmp}/grid.toml", "--out", "{tmp}/out")
NOT_AN_ADDRESS = r"is not a Dask scheduler address; expected tcp://HOST:PORT"
ROWS = [
    Hostile("scheduler-word", _sweep("foo"), r"--scheduler 'foo' " + NOT_AN_ADDRESS, 2, "theory_grid"),
    Hostile("scheduler-no-host", _sweep("tcp://"), r"'tcp://' " + NOT_AN_ADDRESS, 2, "theory_grid"),
    Hostile("scheduler-http-no-host", _sweep("http://"), r"'http://' " + NOT_AN_ADDRESS, 2, "theory_grid"),
    Hostile("scheduler-http-dashboard", _sweep("http://127.0.0.1:8787"), r"http:// is not one of tcp://.*dashboard",
            2, "theory_grid"),
    Hostile("scheduler-port-range", _sweep("tcp://127.0.0.1:70000"), NOT_AN_ADDRESS, 2, "theory_grid"),
    Hostile("scheduler-no-port", _sweep("tcp://127.0.0.1"), NOT_AN_ADDRESS, 2, "theory_grid"),
    # servers on 127.0.0.1 that are not Dask schedulers (the setup puts their address in {scheduler})
    Hostile("server-answers-http", _sweep("{scheduler}"),
            r"is not a Dask scheduler: it answered b'HTTP/1\.1', not a Dask greeting; check", 2, "http_server"),
    Hostile("server-answers-binary-garbage", _sweep("{scheduler}"),
            r"did not answer Dask's identity call .*; is it a scheduler\?", 2, "binary_server"),
    Hostile("server-closes-at-once", _sweep("{scheduler}"),
            r"is not a Dask scheduler: it closed the connection without a Dask greeting", 2, "closing_server"),
    Hostile("server-silent", _sweep("{scheduler}"),
            r"no Dask scheduler answered at tcp://127\.0\.0\.1:\d+ within 1 s", 2, "silent_server"),
    Hostile("port-closed", _sweep("{scheduler}"),
            r"no Dask scheduler answered at tcp://127\.0\.0\.1:\d+ \(Connection refused\)", 2, "closed_port"),
    Hostile("grid-empty-axis", RUN,
            r"\[theory\] widths is empty, so the grid has no points; give widths at least one", 2, "empty_widths"),
    Hostile("grid-empty-dist", RUN, r"\[formats\] dist is empty", 2, "empty_dist"),
    Hostile("grid-empty-formats", RUN, r"\[formats\] formats is empty", 2, "empty_formats"),
    Hostile("out-is-a-file", ("sweep", "{tmp}/grid.toml", "--out", "{tmp}/grid.toml"),
            r"--out .*grid\.toml is a file, not a folder", 2, "theory_grid"),
]  # fmt: skip


# ------------------------------------------------------------------ setups: files, and servers on 127.0.0.1


class FakeServer:
    """A TCP server on 127.0.0.1 that is not Dask; `reply(conn)` decides what each connection gets. It stops
    by itself after `lifetime` seconds, or when the test's ExitStack closes it."""

    def __init__(self, reply, lifetime: float = 30.0) -> None:  # type: ignore[no-untyped-def]
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.reply, self.until, self.stopped = reply, time.monotonic() + lifetime, threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        held = []
        while not self.stopped.is_set() and time.monotonic() < self.until:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            held.append(conn)
            self.reply(conn)
        for conn in held:
            conn.close()
        self.sock.close()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)


def _grid(text: str):  # type: ignore[no-untyped-def]
    def setup(tmp: Path, stack: ExitStack) -> dict[str, str]:
        (tmp / "grid.toml").write_text(text)
        return {}

    return setup


def _server(reply):  # type: ignore[no-untyped-def]
    def setup(tmp: Path, stack: ExitStack) -> dict[str, str]:
        (tmp / "grid.toml").write_text(THEORY)
        server = FakeServer(reply)
        stack.callback(server.close)
        return {"{scheduler}": f"tcp://127.0.0.1:{server.port}"}

    return setup


def closed_port(tmp: Path, stack: ExitStack) -> dict[str, str]:
    (tmp / "grid.toml").write_text(THEORY)
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    return {"{scheduler}": f"tcp://127.0.0.1:{port}"}


SETUPS = {
    "theory_grid": _grid(THEORY),
    "empty_widths": _grid('[sweep]\nkind = "theory"\n[theory]\nwidths = []\n'),
    "empty_dist": _grid('[sweep]\nkind = "formats"\n[formats]\ndist = []\nformats = ["nf4"]\n'),
    "empty_formats": _grid('[sweep]\nkind = "formats"\n[formats]\nformats = []\n'),
    # an HTTP server's first 8 bytes read as a length of 3 EiB to distributed
    "http_server": _server(lambda conn: conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")),
    # a plausible length prefix, then frames that are not Dask's
    "binary_server": _server(lambda conn: conn.sendall((16).to_bytes(8, "little") + b"\xff" * 80)),
    "closing_server": _server(lambda conn: conn.close()),
    "silent_server": _server(lambda conn: None),
    "closed_port": closed_port,
}


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_sweep_refuses(row: Hostile, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "CONNECT_TIMEOUT_S", 1.0)  # the silent server row waits this long
    with ExitStack() as stack:
        subs = SETUPS[row.setup](tmp_path, stack) if row.setup else {}
        argv = tuple(_substitute(a, subs) for a in row.argv)
        start = time.monotonic()
        run_refused(dataclasses.replace(row, argv=argv), tmp_path)
        assert time.monotonic() - start < 5, f"{row.id}: refusal took {time.monotonic() - start:.1f} s"
    assert not (tmp_path / "out").exists(), f"{row.id}: created the output folder"


def _substitute(arg: str, subs: dict[str, str]) -> str:
    for key, value in subs.items():
        arg = arg.replace(key, value)
    return arg
