"""Connect to a Dask scheduler without trusting whatever listens at the address.

distributed reads a peer's greeting with no deadline and allocates whatever length its first 8 bytes claim
(an HTTP reply reads as 3 EiB), so a wrong port would hang or crash a sweep. Here the address is checked
for form, a plain socket reads the greeting's length prefix under a deadline, and Dask's identity call must
answer type 'Scheduler', all within CONNECT_TIMEOUT_S, before a Client is made and any work is sent.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from wquant.errors import ParameterError

#: Seconds from the first connection attempt to a verified scheduler (start-up of the command comes on top).
CONNECT_TIMEOUT_S = 5.0
#: A Dask handshake is about 60 bytes; a length prefix beyond this is not Dask talking.
MAX_GREETING_BYTES = 2**16
SCHEMES = ("tcp", "tls", "ws", "wss")
EXAMPLE = "tcp://HOST:PORT, e.g. tcp://10.0.0.5:8786"

_ADDRESS = re.compile(
    r"(?:(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})"
)


def scheduler_address(text: str) -> str:
    """'SCHEME://HOST:PORT' (tcp, tls, ws, wss) or 'HOST:PORT' (tcp) → the address with its scheme."""
    match = _ADDRESS.fullmatch(text.strip())
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise ParameterError(f"--scheduler {text!r} is not a Dask scheduler address; expected {EXAMPLE}")
    scheme = (match["scheme"] or "tcp").lower()
    if scheme not in SCHEMES:
        hint = "; http:// is the dashboard, the scheduler itself listens on tcp://" if scheme.startswith("http") else ""
        raise ParameterError(
            f"--scheduler {text!r}: {scheme}:// is not one of {', '.join(s + '://' for s in SCHEMES)}{hint}; "
            f"expected {EXAMPLE}"
        )
    return f"{scheme}://{match['host']}:{int(match['port'])}"


def connect_scheduler(address: str, timeout: float | None = None) -> Any:
    """A `distributed.Client` on a verified scheduler; refused with a one-line reason within `timeout` s."""
    address = scheduler_address(address)
    timeout = CONNECT_TIMEOUT_S if timeout is None else timeout
    try:
        from distributed import Client
    except ImportError:
        raise ParameterError("--scheduler needs dask.distributed: pip install 'wquant[dask]'") from None
    deadline = time.monotonic() + timeout
    if address.startswith("tcp://"):  # tls/ws frame the greeting themselves; only tcp can be read raw
        _check_greeting(address, deadline, timeout)
    identity = _identity(address, deadline, timeout)
    kind = identity.get("type") if isinstance(identity, dict) else None
    if kind != "Scheduler":
        what = f"a Dask {kind}" if isinstance(kind, str) else "a Dask peer that gives no type"
        raise ParameterError(f"{address} is {what}, not a scheduler; pass the scheduler's address (default port 8786)")
    try:
        return Client(address, timeout=max(0.1, deadline - time.monotonic()))
    except Exception as exc:  # the peer is remote and untrusted: whatever it does wrong is a refusal
        raise ParameterError(f"cannot start a Dask client on {address}: {_reason(exc)}") from None


def _check_greeting(address: str, deadline: float, timeout: float) -> None:
    """A Dask peer speaks first: an 8-byte little-endian length, then a small handshake. Refuse anything else
    here, before distributed reads (and allocates) it."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=_left(deadline)) as sock:
            prefix = b""
            while len(prefix) < 8:
                sock.settimeout(_left(deadline))
                chunk = sock.recv(8 - len(prefix))
                if not chunk:
                    raise ParameterError(
                        f"{address} is not a Dask scheduler: it closed the connection without a Dask greeting"
                        + (f" after {prefix!r}" if prefix else "")
                    )
                prefix += chunk
    except TimeoutError:
        raise ParameterError(
            f"no Dask scheduler answered at {address} within {timeout:g} s (a scheduler greets at once); "
            "check the address and port (the scheduler's default is 8786)"
        ) from None
    except socket.gaierror as exc:
        raise ParameterError(f"--scheduler {address}: cannot resolve host {host!r} ({exc.strerror})") from None
    except OSError as exc:
        raise ParameterError(
            f"no Dask scheduler answered at {address} ({exc.strerror or exc}); check the address and that it runs"
        ) from None
    length = int.from_bytes(prefix, "little")
    if not 0 < length <= MAX_GREETING_BYTES:
        raise ParameterError(
            f"{address} is not a Dask scheduler: it answered {prefix!r}, not a Dask greeting; check the port "
            "(the scheduler's default is 8786; the dashboard, 8787, speaks http)"
        )


def _identity(address: str, deadline: float, timeout: float) -> Any:
    """Dask's identity call, bounded: a fresh event loop in a worker thread, so a running loop is never reused."""
    from distributed.comm import connect
    from distributed.security import Security

    async def ask(left: float) -> Any:
        comm = await connect(address, timeout=left, **Security().get_connection_args("client"))
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            comm.abort()

    async def bounded(left: float) -> Any:
        return await asyncio.wait_for(ask(left), left)

    try:
        left = _left(deadline)
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, bounded(left)).result()
    except TimeoutError:
        raise ParameterError(
            f"no Dask scheduler answered at {address} within {timeout:g} s; check the address and that it runs"
        ) from None
    except Exception as exc:  # the peer's bytes are untrusted: failing to read them means it is not Dask
        raise ParameterError(
            f"{address} did not answer Dask's identity call ({_reason(exc)}); is it a scheduler?"
        ) from None


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _reason(exc: BaseException) -> str:
    kind = type(exc).__name__ if type(exc).__module__ == "builtins" else f"{type(exc).__module__}.{type(exc).__name__}"
    text = " ".join(str(exc).split())
    return f"{kind}: {text[:200]}" if text else kind
