from __future__ import annotations

import socket

import pytest


def test_the_suite_refuses_connections_off_this_machine() -> None:
    # 203.0.113.0/24 is TEST-NET-3: never routed, so even without the guard nothing would leave.
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s,
        pytest.raises(OSError, match="must not reach the network"),
    ):
        s.connect(("203.0.113.1", 443))
