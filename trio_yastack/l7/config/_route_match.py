"""``route.v3`` matching: :class:`RouteMatch` and :class:`HeaderMatcher`, used by routes, local replies
and the filters that match requests (RBAC, JWT rules)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ._core import _header_name
from ._reader import _bool, _Fields, _list, _Reader, _Skip, _str


@dataclass(frozen=True, slots=True)
class HeaderMatcher:
    """``match.headers[]``.  ``kind`` says how ``name`` is matched: ``exact`` / ``prefix`` (from
    ``exact_match`` or ``string_match {exact | prefix, ignore_case}``), ``present`` (``present_match:
    true``, and Envoy's meaning of a matcher with no match specifier) or ``absent`` (``present_match:
    false``)."""

    name: str
    kind: Literal["exact", "prefix", "present", "absent"]
    value: str | None = None
    ignore_case: bool = False


@dataclass(frozen=True, slots=True)
class RouteMatch:
    """``match``: exactly one of ``prefix`` / ``path`` (exact path), and header matchers (all must match)."""

    prefix: str | None = None
    path: str | None = None
    headers: tuple[HeaderMatcher, ...] = ()


def _string_match(r: _Reader, v: object, path: str) -> tuple[Literal["exact", "prefix"], str, bool]:
    f = _Fields(r, v, path, ("exact", "prefix", "ignore_case"))
    which = f.exactly_one("exact", "prefix")
    value = f.req(which, _str) if which is not None else ""
    ignore_case = f.opt("ignore_case", _bool, False)
    f.done()
    return ("exact" if which == "exact" else "prefix"), value, ignore_case


def _header_matcher(r: _Reader, v: object, path: str) -> HeaderMatcher:
    f = _Fields(r, v, path, ("name", "exact_match", "string_match", "present_match"))
    name = f.req("name", _header_name)
    specifiers = [k for k in ("exact_match", "string_match", "present_match") if f.has(k)]
    m: HeaderMatcher | None = None
    if len(specifiers) > 1:
        f.problem(
            specifiers[1],
            f"only one of exact_match, string_match, present_match may be set (also found {specifiers[0]!r})",
        )
    elif not specifiers:
        m = HeaderMatcher(name, "present")
    elif specifiers[0] == "exact_match":
        m = HeaderMatcher(name, "exact", f.req("exact_match", _str))
    elif specifiers[0] == "string_match":
        sm = f.req("string_match", _string_match)
        if sm is not None:
            m = HeaderMatcher(name, sm[0], sm[1], sm[2])
    else:
        m = HeaderMatcher(name, "present" if f.req("present_match", _bool) else "absent")
    f.done()
    if m is None:  # unreachable: every branch that leaves m None marked f failed, so done() raised
        raise _Skip
    return m


def _route_match(r: _Reader, v: object, path: str) -> RouteMatch:
    f = _Fields(r, v, path, ("prefix", "path", "headers"))
    which = f.exactly_one("prefix", "path")
    value = f.req(which, _str) if which is not None else ""
    if which == "path" and value is not None and not value.startswith("/"):
        f.problem("path", f"{value!r} must start with '/'")
    headers = f.opt("headers", _list(_header_matcher), ())
    f.done()
    return RouteMatch(
        prefix=value if which == "prefix" else None, path=value if which == "path" else None, headers=headers
    )
