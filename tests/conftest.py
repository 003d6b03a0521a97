"""Suite-wide guards: tests run offline, and any attempt to leave this machine fails loudly."""

from __future__ import annotations

import ipaddress
import os
import socket
import zlib
from collections.abc import Callable, Iterator

import pytest

# Model hubs must never be asked; set before any test imports transformers or open_clip.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

_real_connect = socket.socket.connect


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow",
        action="store_true",
        help="also run the tests marked slow (./dev.sh test and CI do)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Plain `pytest` stays fast for the edit-test loop; the full suite is `pytest --run-slow`.
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow (./dev.sh test does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _is_local(address: object) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    host = address[0] if isinstance(address, tuple) else address
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: object) -> None:
    if not _is_local(address):
        raise OSError(f"tests must not reach the network (attempted connection to {address!r})")
    return _real_connect(self, address)


FlushedGzip = Callable[[list[bytes]], tuple[bytes, list[int]]]


def _flushed_gzip(lines: list[bytes]) -> tuple[bytes, list[int]]:
    packer = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    blob, ends = b"", []
    for line in lines:
        blob += packer.compress(line + b"\n") + packer.flush(zlib.Z_FULL_FLUSH)
        ends.append(len(blob))
    return blob + packer.flush(), ends


@pytest.fixture(scope="session")
def flushed_gzip() -> FlushedGzip:
    """``lines -> (gzip bytes, where each line's compressed bytes end)``: a full flush after each
    line puts its block on a byte boundary, so a test can cut or break the stream at a line."""
    return _flushed_gzip


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(socket.socket, "connect", _guarded_connect)
    yield
