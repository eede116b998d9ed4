"""Port spec strings, ``kind:NAME[,key=value...]``, read into a port's options dataclass.

One reader for every port kind (``tap:``, ``af_packet:``, ``af_xdp:``), so they all accept the same
words and answer a bad spec the same way: the field types of the options dataclass say how each
value is read (``bool``: on/off, yes/no, true/false, 1/0; ``int``: decimal or ``0x`` hex; an
optional field: empty, ``none`` or ``auto`` for None; anything else: the text as given), and a
mistyped key or value is a ``ValueError`` naming the spec, the pair and the keys there are.
"""

from __future__ import annotations

from dataclasses import fields
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = ["parse_port_spec"]

_BOOL_WORDS = {
    "1": True, "on": True, "yes": True, "true": True, "0": False, "off": False, "no": False, "false": False,
}  # fmt: skip
_NONE_WORDS = ("", "none", "auto")

Options = TypeVar("Options", bound="DataclassInstance")


def parse_port_spec(spec: str, kind: str, options_type: type[Options], *, head: str, missing: str) -> Options:
    """``kind:NAME[,key=value...]`` (the ``kind:`` prefix optional) as ``options_type`` (a
    dataclass), NAME going to its field ``head``; ``missing`` is the error when NAME is empty."""
    name, *pairs = spec.removeprefix(f"{kind}:").split(",")
    if not name:
        raise ValueError(f"nic {spec!r}: {missing}")
    kinds = {f.name: str(f.type) for f in fields(options_type) if f.name != head}
    values: dict[str, Any] = {head: name}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in kinds:
            known = ", ".join(sorted(kinds))
            raise ValueError(f"nic {spec!r}: {pair!r} is not key=value with a key among {known}")
        try:
            values[key] = _value(kinds[key], raw)
        except (KeyError, ValueError):
            raise ValueError(f"nic {spec!r}: bad value {raw!r} for {key}") from None
    return options_type(**values)


def _value(kind: str, raw: str) -> object:
    """``raw`` read as a field annotated ``kind`` (the annotation's text)."""
    if kind == "bool":
        return _BOOL_WORDS[raw.lower()]
    if kind.endswith("| None") and raw.lower() in _NONE_WORDS:
        return None
    if kind.startswith("int"):
        return int(raw, 0)
    return raw
