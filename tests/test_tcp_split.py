"""The shape of TCP's code (trio_yastack/stack/tcp/): what other layers rely on stays as it was.

The connection's methods are written in ``_input``, ``_output`` and ``_timers`` and bound in its
class body; the journey of a packet traces some of them by overriding them in a subclass, so
their names and signatures are a contract, and the connection must stay one slotted object.
"""

from __future__ import annotations

import inspect
from types import FunctionType

from trio_yastack.stack import TcpConnection, TcpLayer, TcpListener, TcpState
from trio_yastack.stack.tcp import _input, _output, _timers


def _signature(cls: type, name: str) -> str:
    return str(inspect.signature(getattr(cls, name)))


def test_traced_methods_keep_their_signatures() -> None:
    """The methods the journey's tracer overrides, as it calls them."""
    assert (
        _signature(TcpConnection, "tcp_output")
        == "(self, now: 'float', *, limited_transmit: 'bool' = False) -> 'None'"
    )
    assert (
        _signature(TcpConnection, "send")
        == "(self, data: 'bytes | bytearray | memoryview', now: 'float') -> 'int'"
    )
    assert _signature(TcpConnection, "receive") == "(self, max_bytes: 'int', now: 'float') -> 'bytes | None'"
    assert _signature(TcpLayer, "tcp_input") == (
        "(self, buf: 'bytes', start: 'int', end: 'int', src: 'int', dst: 'int', ip_offset: 'int',"
        " now: 'float') -> 'None'"
    )
    assert _signature(TcpLayer, "_attach") == "(self, conn: 'TcpConnection') -> 'None'"
    assert _signature(TcpLayer, "detach") == "(self, conn: 'TcpConnection', was_state: 'int') -> 'None'"
    assert _signature(TcpLayer, "listen") == "(self, port: 'int', backlog: 'int' = 128) -> 'TcpListener'"
    assert _signature(TcpListener, "connection_established") == "(self, conn: 'TcpConnection') -> 'None'"
    assert _signature(TcpListener, "accept") == "(self) -> 'TcpConnection | None'"


def test_every_function_of_the_split_modules_is_a_method_of_the_connection() -> None:
    """Each function ``_input``/``_output``/``_timers`` define for the connection is bound in its
    class under its own name, and looks like a method written there (a bare ``self``)."""
    for module in (_input, _output, _timers):
        for name, function in vars(module).items():
            if not isinstance(function, FunctionType) or function.__module__ != module.__name__:
                continue
            if next(iter(inspect.signature(function).parameters)) != "self":
                continue  # a helper of the module (window_shift_for, tcp_checksum_and_send)
            assert vars(TcpConnection).get(name) is function, f"{module.__name__}.{name} is not bound"
            assert "self" not in function.__annotations__, name


def test_the_connection_is_one_slotted_object() -> None:
    """No ``__dict__`` (memory per connection, and the tracer's class swap needs the same layout)."""
    assert TcpConnection.__dictoffset__ == 0
    assert TcpConnection.__mro__ == (TcpConnection, object)
    assert TcpState.ESTABLISHED == 4
