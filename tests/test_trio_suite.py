"""trio's own socket and high-level stream tests, unmodified, over two stacks on a memory wire.

trio ships its test suite inside the package (``trio/_tests``).  Its socket tests and its
high-level stream tests are imported here and run by pytest-trio exactly as trio runs them,
except that an autouse fixture opens two stacks first (``trio.socket.socket()`` then makes
stack sockets) and maps 127.0.0.0/8 to them (:func:`map_loopback_to`): a socket bound to
loopback lives on stack B (198.18.0.1; ``::1``: 2001:2::1), a client socket on stack A
(198.18.0.2, 2001:2::2, the default) connects to B over the wire, and B's sockets that talk to
each other use B's own address (the IP layer's loopback queue).  They are the judge of
"unmodified trio code runs over the stack": a gap we open again fails here.

The tests that cannot apply are listed in ``NOT_APPLICABLE`` with the reason; every other test
of these modules runs.  A test trio adds in a new release runs too (and may fail: then it is a
new gap, or a new entry with its reason).
"""

from __future__ import annotations

import functools
import inspect
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

pytest.importorskip("trio._tests.test_socket")

from socket_helpers import A_IP, B_IP, two_stacks
from trio._tests import test_highlevel_open_tcp_listeners as _listeners
from trio._tests import test_highlevel_open_tcp_stream as _open_stream
from trio._tests import test_highlevel_socket as _hl_socket
from trio._tests import test_socket as _socket

from trio_yastack.socket_api import map_loopback_to

#: tests that cannot apply over the stack, by module, with why: skipped.  (None today: every
#: coroutine test of these modules passes.  One that has to be skipped goes here with its reason.)
_PRIVATE = "checks that sockets are trio's private _SocketType (stack sockets are SocketType subclasses)"
_MAPPED = "checks that loopback resolves to 127.x; here loopback is mapped to the stacks' addresses"
_STDLIB_GAI = "monkeypatches the stdlib getaddrinfo under trio's default resolver, which ours replaces"
_OWN = "installs its own socket factory or resolver and checks none was installed before (ours is)"

#: tests that cannot apply over the stack, by module, with why: skipped.  Every other coroutine
#: test of these modules runs (``YASTACK_TRIO_SUITE_ALL=1`` runs these too, to look again).
NOT_APPLICABLE: dict[str, dict[str, str]] = {
    "test_socket": {
        "test_unix_domain_socket": "AF_UNIX sockets are the kernel's",
        "test_SocketType_connect_paths": _PRIVATE,
        "test_resolve_address_exception_in_connect_closes_socket": _PRIVATE,
        "test_SocketType_resolve": _MAPPED,
        "test_custom_hostname_resolver": _OWN,
        "test_custom_socket_factory": _OWN,
        "test_getaddrinfo": _STDLIB_GAI,
        "test_idna": _STDLIB_GAI,
        "test_SocketType_unresolved_names": _MAPPED + " (localhost)",
    },
    "test_highlevel_socket": {},
    "test_highlevel_open_tcp_stream": {
        "test_local_address_real": _MAPPED + " (binds 127.0.0.2 and reads it back)",
    },
    "test_highlevel_open_tcp_listeners": {
        "test_open_tcp_listeners_rebind": "probes the listener's address with a kernel socket's bind",
    },
}

_PAIR = "socketpair() makes AF_UNIX sockets, the kernel's"
#: tests that run and pass but exercise kernel sockets, not the stack's: they judge nothing of
#: ours (listed so nobody counts them as coverage of the stack)
KERNEL_ONLY: dict[str, str] = {
    "test_socket.test_from_stdlib_socket": "wraps a stdlib socket",
    "test_socket.test_from_fd": "wraps a kernel descriptor",
    "test_socket.test_socketpair_simple": _PAIR,
    "test_socket.test_SocketType_dup": _PAIR,
    "test_socket.test_SocketType_shutdown": _PAIR,
    "test_socket.test_SocketType_non_blocking_paths": _PAIR,
    "test_socket.test_send_recv_variants": "its TCP half uses socketpair() (its UDP half is the stack's)",
    "test_socket.test_interrupted_by_close": _PAIR,
    "test_socket.test_many_sockets": _PAIR,
    "test_socket.test_unix_domain_socket": "AF_UNIX",
    "test_socket.test_custom_socket_factory": "installs its own factory in place of the stack's",
    "test_socket.test_custom_hostname_resolver": "installs its own resolver in place of the stack's",
    "test_socket.test_getaddrinfo": "monkeypatches the stdlib resolver under trio's numeric fast path",
    "test_highlevel_socket.test_SocketStream_generic": _PAIR,
    "test_highlevel_socket.test_socket_stream_works_when_peer_has_already_closed": _PAIR,
    "test_highlevel_socket.test_SocketListener_accept_errors": "a fake socket class",
    "test_highlevel_open_tcp_stream.test_open_tcp_stream_input_validation": "no socket opened",
}


def _over_the_stacks(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    """``test`` run inside two stacks, with loopback meaning stack B's address.  (A wrapper, not
    an autouse fixture: pytest-trio runs only the async fixtures a test names.)"""

    @functools.wraps(test)  # the signature (fixtures, parameters) and marks stay the test's own
    async def run(*args: Any, **kwargs: Any) -> None:
        async with two_stacks(ip6=True) as (_a, b):
            with map_loopback_to(b):
                await test(*args, **kwargs)

    run.pytestmark = list(getattr(test, "pytestmark", []))  # type: ignore[attr-defined]  # a copy: trio's own list stays as it is
    return run


def _collect(module: object, name: str) -> None:
    """Make ``module``'s tests ours (pytest collects them from this module's namespace), with
    the ones that cannot apply skipped with their reason."""
    skipped = NOT_APPLICABLE[name]
    for attribute in dir(module):
        if not attribute.startswith("test_"):
            continue
        test = getattr(module, attribute)
        if not inspect.iscoroutinefunction(test):
            continue  # a plain function opens no socket: nothing of the stack's to judge
        wrapped = _over_the_stacks(test)
        if attribute in skipped and not os.environ.get("YASTACK_TRIO_SUITE_ALL"):
            wrapped = pytest.mark.skip(reason=skipped[attribute])(wrapped)
        globals()[f"test_{name.removeprefix('test_')}__{attribute.removeprefix('test_')}"] = wrapped


monkeygai = _socket.monkeygai  # the fixture test_socket's resolver tests take

for _module, _name in (
    (_socket, "test_socket"),
    (_hl_socket, "test_highlevel_socket"),
    (_open_stream, "test_highlevel_open_tcp_stream"),
    (_listeners, "test_highlevel_open_tcp_listeners"),
):
    _collect(_module, _name)


@_over_the_stacks
async def test_the_suite_runs_on_the_stacks() -> None:
    """The fixture is in force: ``trio.socket.socket()`` is a stack socket, loopback binds land
    on stack B, and a loopback client reaches them over the wire from stack A."""
    import trio

    from trio_yastack.socket_api import StackSocket

    listener, client = trio.socket.socket(), trio.socket.socket()
    with listener, client:
        assert isinstance(listener, StackSocket) and isinstance(client, StackSocket)
        await listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        host, port = listener.getsockname()
        assert host == B_IP
        await client.connect(("127.0.0.1", port))
        server, peer = await listener.accept()
        with server:
            assert peer == client.getsockname() and peer[0] == A_IP


@_over_the_stacks
async def test_the_suite_runs_ipv6_on_the_stacks() -> None:
    """The same for ``::1`` (trio's IPv6 cases): an AF_INET6 stack socket bound to it lands on
    stack B's IPv6 address, and a client from stack A reaches it over IPv6 on the wire."""
    import trio

    from trio_yastack.socket_api import StackSocket6
    from trio_yastack.stack import TcpConnection6

    listener = trio.socket.socket(socket.AF_INET6)
    client = trio.socket.socket(socket.AF_INET6)
    with listener, client:
        assert isinstance(listener, StackSocket6) and isinstance(client, StackSocket6)
        await listener.bind(("::1", 0))
        listener.listen(1)
        host, port, *_ = listener.getsockname()
        assert host == "2001:2::1"
        await client.connect(("::1", port))
        server, peer = await listener.accept()
        with server:
            assert peer == client.getsockname() and peer[0] == "2001:2::2"
            assert isinstance(client.connection, TcpConnection6)
