"""pipeline.config: defaults < JSON file < overrides; unknown keys and bad types are errors."""

import json
from dataclasses import dataclass
from typing import Literal

import pytest

from pipeline.config import build_config, config_to_dict
from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Cfg:
    size: int = 224
    rate: float = 0.5
    name: str = "x"
    mode: Literal["fast", "slow"] = "fast"
    dims: tuple[int, ...] = (4, 2)
    seed: int | None = None


def write(tmp_path, data) -> str:
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(data))
    return str(p)


def test_layers_defaults_then_file_then_flags(tmp_path):
    path = write(tmp_path, {"size": 64, "rate": 1, "dims": [8, 4, 2]})
    cfg = build_config(Cfg, path, {"size": 32, "name": None})
    assert cfg.size == 32          # flag beats file
    assert cfg.rate == 1.0 and isinstance(cfg.rate, float)  # int accepted for a float
    assert cfg.dims == (8, 4, 2)   # JSON list -> tuple
    assert cfg.name == "x"         # None means "flag not given"
    assert config_to_dict(cfg)["dims"] == [8, 4, 2]


def test_unknown_key_names_the_file_and_the_known_keys(tmp_path):
    path = write(tmp_path, {"sise": 64})
    with pytest.raises(ConfigError, match=r"cfg\.json.*unknown key.*sise.*known keys"):
        build_config(Cfg, path)
    with pytest.raises(ConfigError, match="command line.*unknown"):
        build_config(Cfg, None, {"bogus": 1})


@pytest.mark.parametrize("data, field", [
    ({"size": "big"}, "size"), ({"size": 2.5}, "size"), ({"size": True}, "size"),
    ({"rate": "fast"}, "rate"), ({"mode": "medium"}, "mode"), ({"dims": 3}, "dims"),
    ({"seed": "x"}, "seed"),
])
def test_wrong_types_are_errors_naming_the_field(tmp_path, data, field):
    with pytest.raises(ConfigError, match=field):
        build_config(Cfg, write(tmp_path, data))


def test_optional_field_takes_null_and_int(tmp_path):
    assert build_config(Cfg, write(tmp_path, {"seed": None})).seed is None
    assert build_config(Cfg, write(tmp_path, {"seed": 7})).seed == 7


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_config(Cfg, tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        build_config(Cfg, bad)
    with pytest.raises(ConfigError, match="JSON object"):
        build_config(Cfg, write(tmp_path, [1, 2]))
