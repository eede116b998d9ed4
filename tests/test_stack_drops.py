"""Drop reasons are a registry per layer (trio_yastack/stack/_drops.py): a reason nobody registered
is refused, so a typo cannot start a counter of its own, and the code names reasons through the
registries rather than as string literals."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import trio_yastack
from trio_yastack.stack import ArpDrop, EtherDrop, IcmpDrop, IpDrop, TcpDrop, UdpDrop
from trio_yastack.stack._drops import Icmp6Drop, Ip6Drop, Nd6Drop, registered
from trio_yastack.stack._stats import ArpStats, EtherStats, IcmpStats, IpStats, TcpStats, UdpStats
from trio_yastack.stack._stats6 import Icmp6Stats, Ip6Stats, Nd6Stats
from trio_yastack.stack.wire import Malformed, WireError, WireReason
from trio_yastack.stack.wire._errors import WIRE_REASONS

PACKAGE = Path(trio_yastack.__file__).parent
REGISTRIES = {
    "ether": (EtherStats, EtherDrop),
    "arp": (ArpStats, ArpDrop),
    "ip": (IpStats, IpDrop),
    "icmp": (IcmpStats, IcmpDrop),
    "udp": (UdpStats, UdpDrop),
    "tcp": (TcpStats, TcpDrop),
    "ip6": (Ip6Stats, Ip6Drop),
    "icmp6": (Icmp6Stats, Icmp6Drop),
    "nd6": (Nd6Stats, Nd6Drop),
}


@pytest.mark.parametrize("layer", sorted(REGISTRIES))
def test_each_layer_counts_its_registered_reasons_and_refuses_others(layer: str) -> None:
    stats_class, registry = REGISTRIES[layer]
    stats = stats_class()
    assert stats.layer == layer
    assert stats.reasons == registered(registry) and stats.reasons
    reason = sorted(stats.reasons)[0]
    stats.drop(reason)
    stats.drop(reason)
    with pytest.raises(ValueError, match="not a registered"):
        stats.drop(reason + "_typo")
    assert stats.snapshot().dropped == {reason: 2}  # the refused reason left no counter behind


def test_reasons_keep_their_counter_names() -> None:
    """Users and tests read the counters by these strings: the constants must not rename them."""
    assert TcpDrop.PAWS == "paws"
    assert IpDrop.BAD_FRAGMENT == "bad_fragment"
    assert EtherDrop.OUTBOX_FULL == "outbox_full"
    assert UdpDrop.NO_SOCKET == "no_socket"


@pytest.mark.parametrize("layer", sorted(REGISTRIES))
def test_each_registry_is_consistent(layer: str) -> None:
    """Constant names spell their values, and the sets the accounting oracle adds up (OUTPUT,
    HEADER, PARSE, ERROR_INPUT) hold only the layer's own reasons."""
    _stats_class, registry = REGISTRIES[layer]
    reasons = registered(registry)
    for name, value in vars(registry).items():
        if name.isupper() and isinstance(value, str):
            assert name == value.upper(), (name, value)
        elif isinstance(value, frozenset):
            assert value and value <= reasons, (name, value - reasons)


def test_wire_errors_take_registered_reasons_only() -> None:
    assert Malformed(WireReason.BAD_OPTION).reason == "bad_option"
    with pytest.raises(ValueError, match="not a registered WireReason"):
        WireError("bad_optoin")
    assert registered(WireReason) == WIRE_REASONS


def _drop_calls(tree: ast.AST) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("drop", "_discard")
        and node.args
    ]


def test_stack_names_drop_reasons_through_the_registries() -> None:
    """No ``drop("...")`` with a literal in stack/: each reason is ``<Layer>Drop.NAME`` (which the
    type checker holds to the registry), or a WireError's ``reason`` passed on."""
    found = 0
    for path in sorted((PACKAGE / "stack").rglob("*.py")):
        for call in _drop_calls(ast.parse(path.read_text())):
            reason = call.args[-1]
            where = f"{path.relative_to(PACKAGE)}:{call.lineno}"
            candidates = (reason.body, reason.orelse) if isinstance(reason, ast.IfExp) else (reason,)
            for arg in candidates:
                assert not isinstance(arg, ast.Constant), f"{where}: a literal drop reason"
                if isinstance(arg, ast.Attribute) and isinstance(arg.value, ast.Name):
                    if arg.value.id.endswith("Drop"):
                        registry = {"Ether": EtherDrop, "Arp": ArpDrop, "Ip": IpDrop, "Icmp": IcmpDrop,
                                    "Udp": UdpDrop, "Tcp": TcpDrop, "Ip6": Ip6Drop, "Icmp6": Icmp6Drop,
                                    "Nd6": Nd6Drop}[arg.value.id[: -len("Drop")]]  # fmt: skip
                        assert isinstance(getattr(registry, arg.attr, None), str), where
                        found += 1
                        continue
                    assert arg.attr == "reason", f"{where}: {ast.unparse(arg)}"  # exc.reason
                else:
                    assert isinstance(arg, ast.Name) and arg.id == "reason", f"{where}: {ast.unparse(arg)}"
    assert found > 50


def test_literal_reasons_elsewhere_are_registered() -> None:
    """Code outside stack/ that counts a drop on a stack layer (the runtime's ``tx_refused``) uses
    a reason that layer registered."""
    checked = 0
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "stack") in path.parents:
            continue
        for call in _drop_calls(ast.parse(path.read_text())):
            assert isinstance(call.func, ast.Attribute)
            owner = call.func.value
            reason = call.args[-1]
            if isinstance(owner, ast.Attribute) and owner.attr.startswith("stats_"):
                layer = owner.attr[len("stats_") :]
                assert isinstance(reason, ast.Constant | ast.Attribute), ast.unparse(call)
                if isinstance(reason, ast.Constant):
                    assert reason.value in registered(REGISTRIES[layer][1]), f"{path}:{call.lineno}"
                checked += 1
    assert checked >= 1
