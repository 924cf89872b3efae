"""Stage configs: frozen dataclasses filled as defaults < configs/*.json < CLI flags."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import ConfigError

T = TypeVar("T")
# Seeds reach torch.manual_seed, which takes an unsigned 64-bit integer.
MAX_SEED = 2**64 - 1

# The repo's configs/ folder, found next to the package (not the cwd) so that the CLI behaves the
# same from any directory; absent (e.g. a wheel install) -> built-in defaults.
CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


def default_config(name: str) -> Path | None:
    """configs/NAME (e.g. "extract.json") of this checkout when it exists, else None."""
    path = CONFIGS_DIR / name
    return path if path.is_file() else None


def _coerce(name: str, value: Any, hint: Any, source: str) -> Any:
    """Check a JSON value against a dataclass field's type; tuples come in as lists."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg, source)
            except ConfigError:
                continue
        raise ConfigError(f"{source}: '{name}' has an invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{source}: '{name}' must be one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: '{name}' must be a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(name, v, inner, source) for v in value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: '{name}' must be a number, got {value!r}")
        # JSON files may hold NaN / Infinity literals (Python's json reads them); no setting
        # means anything with them, and NaN passes every range check (nan <= 0 is False).
        if not math.isfinite(value):
            raise ConfigError(f"{source}: '{name}' must be a finite number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: '{name}' must be an integer, got {value!r}")
        # JSON integers are unbounded; torch/numpy take at most 64 bits (seeds, sizes).
        if not -2**63 <= value <= 2**64 - 1:
            raise ConfigError(f"{source}: '{name}' = {value} does not fit in 64 bits")
        return value
    if hint in (str, bool):
        if not isinstance(value, hint):
            raise ConfigError(f"{source}: '{name}' must be a {hint.__name__}, got {value!r}")
        return value
    return value


def build_config(cls: type[T], path: str | Path | None = None,
                 overrides: Mapping[str, Any] | None = None, *,
                 overrides_source: str = "command line") -> T:
    """Build a frozen dataclass `cls`: its defaults, then the JSON file at `path`, then
    `overrides` (CLI flags; `None` values mean "not given"). Unknown keys are an error.
    `overrides_source` names where the overrides came from in error messages."""
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    layers: list[tuple[str, Mapping[str, Any]]] = []
    if path is not None:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(
                f"config file {p} does not exist: pass an existing JSON file") from None
        except json.JSONDecodeError as e:
            raise ConfigError(
                f"config file {p} is not valid JSON ({e}): fix or remove it") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a JSON object")
        layers.append((str(p), data))
    if overrides:
        layers.append((overrides_source, {k: v for k, v in overrides.items() if v is not None}))
    for source, layer in layers:
        unknown = sorted(set(layer) - fields)
        if unknown:
            raise ConfigError(
                f"{source}: unknown key(s) {unknown} for {cls.__name__}; "
                f"known keys: {sorted(fields)}")
        for name, value in layer.items():
            values[name] = _coerce(name, value, hints[name], source)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        where = f"{overrides_source}: " if overrides_source != "command line" else ""
        raise ConfigError(f"{where}invalid {cls.__name__}: {e}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))
