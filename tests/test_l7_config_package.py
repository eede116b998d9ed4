"""The config package's shape: ``trio_yastack.l7.config`` is split by Envoy's API areas, and each area
module must import on its own (its dependencies point one way; no import cycle hidden by the order
``__init__`` happens to import them in), while every public name stays importable from the package."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from typing import TypeVar

import pytest

import trio_yastack.l7.config as config

AREAS = sorted(m.name for m in pkgutil.iter_modules(config.__path__) if m.name.startswith("_"))


def test_the_areas_are_there() -> None:
    assert {"_listener", "_hcm", "_route", "_http_filters", "_cluster", "_tls", "_bootstrap"} <= set(AREAS)


@pytest.mark.parametrize("area", AREAS)
def test_each_area_imports_first_in_a_fresh_interpreter(area: str) -> None:
    """A module that only imports because ``__init__`` loaded its dependencies first would fail here."""
    code = f"import importlib, sys\nimportlib.import_module('trio_yastack.l7.config.{area}')\nprint('ok')\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_every_public_name_is_exported_from_its_area() -> None:
    """``__all__`` resolves, and each class or function defined in an area is re-exported under the
    same object (``from ._x import Y as Y``), not a copy."""
    for name in config.__all__:
        assert hasattr(config, name), name
    for area in AREAS:
        module = sys.modules[f"trio_yastack.l7.config.{area}"]
        for name, value in vars(module).items():
            if isinstance(value, TypeVar) or name.startswith("_"):
                continue
            if getattr(value, "__module__", None) != module.__name__:
                continue
            assert getattr(config, name) is value, f"{area}.{name} is not re-exported"
