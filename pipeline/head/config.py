"""The head's architecture as a frozen dataclass (torch-free, so checkpoints read without torch)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class HeadConfig:
    """Architecture of the head; saved as JSON in the checkpoint so the file rebuilds it."""

    input_dim: int = 2048
    hidden_dims: tuple[int, ...] = (1024, 512, 256, 128)
    dropout: float = 0.3
    batch_norm: bool = True
    # sigmoid: (0, 1); tanh: 0.5 * (tanh + 1), the "scaled tanh" alternative, also (0, 1).
    output: Literal["sigmoid", "tanh"] = "sigmoid"

    def __post_init__(self) -> None:
        if self.input_dim < 1 or any(h < 1 for h in self.hidden_dims):
            raise ConfigError(f"HeadConfig: dimensions must be positive, got {self}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"HeadConfig: dropout must be in [0, 1), got {self.dropout}")
        if self.output not in ("sigmoid", "tanh"):
            raise ConfigError(f"HeadConfig: output must be 'sigmoid' or 'tanh', got {self.output}")

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
            data["hidden_dims"] = tuple(int(h) for h in data["hidden_dims"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> HeadConfig:
        return cls.from_dict(json.loads(text))
