"""The head's architecture as a frozen dataclass (torch-free, so checkpoints read without torch)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Literal

from pipeline.errors import ConfigError

# Bounds on what a config (or a checkpoint's recorded config) may ask for, so that building or
# exporting a head never tries to allocate absurd amounts: the default head is 2048 wide with
# ~2.8 M parameters; 500 M float32 parameters are 2 GB, already more than a head needs.
MAX_DIM = 1_000_000
MAX_LAYERS = 64
MAX_PARAMETERS = 500_000_000


def _is_int(v: Any) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


@dataclass(frozen=True)
class HeadConfig:
    """Architecture of the head; saved as JSON in the checkpoint so the file rebuilds it."""

    input_dim: int = 2048
    hidden_dims: tuple[int, ...] = (1024, 512, 256, 128)
    dropout: float = 0.3
    batch_norm: bool = True
    # sigmoid: (0, 1); tanh: 0.5 * (tanh + 1), the "scaled tanh" alternative, also (0, 1).
    # linear: the raw output, for a target that is not bounded (log10 of the SVG's bytes).
    output: Literal["sigmoid", "tanh", "linear"] = "sigmoid"

    def __post_init__(self) -> None:
        dims = (self.input_dim, *self.hidden_dims)
        if not all(_is_int(d) for d in dims):
            raise ConfigError(f"HeadConfig: input_dim and hidden_dims must be integers, got {self}")
        if any(not 1 <= d <= MAX_DIM for d in dims):
            raise ConfigError(f"HeadConfig: dimensions must be in 1..{MAX_DIM:,}, got "
                              f"input_dim {self.input_dim}, hidden_dims {list(self.hidden_dims)}")
        if len(self.hidden_dims) > MAX_LAYERS:
            raise ConfigError(f"HeadConfig: at most {MAX_LAYERS} hidden layers, got "
                              f"{len(self.hidden_dims)}")
        if self.parameter_count() > MAX_PARAMETERS:
            raise ConfigError(f"HeadConfig: {self.parameter_count():,} parameters, more than "
                              f"the {MAX_PARAMETERS:,} allowed (input_dim {self.input_dim}, "
                              f"hidden_dims {list(self.hidden_dims)})")
        if (not isinstance(self.dropout, Real) or isinstance(self.dropout, bool)
                or not math.isfinite(self.dropout) or not 0.0 <= self.dropout < 1.0):
            raise ConfigError(f"HeadConfig: dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.batch_norm, bool):
            raise ConfigError(f"HeadConfig: batch_norm must be true or false, got "
                              f"{self.batch_norm!r}")
        if self.output not in ("sigmoid", "tanh", "linear"):
            raise ConfigError(f"HeadConfig: output must be 'sigmoid', 'tanh' or 'linear', got "
                              f"{self.output}")

    def parameter_count(self) -> int:
        """Trainable parameters: Linear weights + biases, BatchNorm scale + shift (plain ints,
        computed before anything is allocated)."""
        widths = [int(self.input_dim), *(int(h) for h in self.hidden_dims), 1]
        linear = sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))
        return linear + (2 * sum(widths[1:-1]) if self.batch_norm else 0)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"HeadConfig: unknown key(s) {unknown}; known keys: {sorted(known)}")
        data = dict(data)
        if "hidden_dims" in data:
            if not isinstance(data["hidden_dims"], (list, tuple)):
                raise ConfigError(f"HeadConfig: hidden_dims must be a list of integers, got "
                                  f"{data['hidden_dims']!r}")
            # no int() coercion: 1.5 or "7" is an error, not silently another architecture
            data["hidden_dims"] = tuple(data["hidden_dims"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> HeadConfig:
        return cls.from_dict(json.loads(text))
