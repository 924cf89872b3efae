"""Backbone weights: resolve 'imagenet' | PATH | 'random:SEED' to a state dict and an identity."""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipeline.errors import WeightsError

IMAGENET_ENUM = "ResNet50_Weights.IMAGENET1K_V2"
_RANDOM = re.compile(r"^random:(\d+)$")
# How long to wait to learn that the weights host is unreachable before failing.
PROBE_TIMEOUT_S = 5.0
DOWNLOAD_SOCKET_TIMEOUT_S = 30.0


def file_sha256(path: str | Path) -> str:
    """sha256 hex of a file, streamed in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _imagenet_weights():
    from torchvision.models import ResNet50_Weights

    return ResNet50_Weights.IMAGENET1K_V2


def imagenet_cache_path() -> Path:
    """Where torchvision looks for the IMAGENET1K_V2 file ($TORCH_HOME/hub/checkpoints/...)."""
    import torch

    filename = os.path.basename(urlparse(_imagenet_weights().url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def weights_identity(weights: str) -> dict[str, Any]:
    """The fingerprint's view of `weights`: enum name, file digest or random seed (JSON)."""
    m = _RANDOM.match(weights)
    if m:
        return {"kind": "random", "seed": int(m.group(1))}
    if weights == "imagenet":
        return {"kind": "torchvision", "name": IMAGENET_ENUM}
    p = Path(weights)
    if not p.is_file():
        raise WeightsError(f"weights {weights!r}: no such file; pass 'imagenet', "
                           "'random:SEED' or the path of a ResNet-50 state dict")
    return {"kind": "file", "sha256": file_sha256(p)}


def host_reachable(host: str, port: int, timeout: float) -> bool:
    """TCP connect in a daemon thread so that a slow DNS lookup cannot hang us past `timeout`."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(ok)


def _offline_message(cache: Path, why: str) -> str:
    return (f"--weights imagenet: {_imagenet_weights().url} is not cached and cannot be "
            f"downloaded ({why}). Put the file at {cache} (TORCH_HOME={cache.parents[2]}), "
            "or use --weights PATH (a ResNet-50 state dict) or --weights random:SEED")


def imagenet_state_dict() -> dict[str, Any]:
    """IMAGENET1K_V2 through torchvision's cache; offline, fails within seconds with directions."""
    enum = _imagenet_weights()
    cache = imagenet_cache_path()
    if not cache.is_file():
        url = urlparse(enum.url)
        if os.environ.get("SSIMCACHE_OFFLINE") == "1":
            raise WeightsError(_offline_message(cache, "SSIMCACHE_OFFLINE=1"))
        if not host_reachable(url.hostname or "", url.port or 443, PROBE_TIMEOUT_S):
            raise WeightsError(_offline_message(cache, f"{url.hostname} unreachable"))
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)  # urllib inside torch has no timeout
    try:
        return enum.get_state_dict(progress=False, check_hash=True)
    except Exception as e:  # noqa: BLE001 - network, hash or file errors all mean "no weights"
        if cache.is_file():
            raise WeightsError(f"--weights imagenet: cached file {cache} cannot be loaded ({e}); "
                               "delete it to download again or use --weights PATH") from None
        raise WeightsError(_offline_message(cache, f"{type(e).__name__}: {e}")) from None
    finally:
        socket.setdefaulttimeout(old)


def _load_error_detail(err: Exception) -> str:
    """The useful part of torch.load's error, without its advice to load with
    weights_only=False (that unpickles arbitrary code from a file we know nothing about)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    if "WeightsUnpickler error:" in text:  # what the safe unpickler refused
        rest = text.split("WeightsUnpickler error:", 1)[1]
        lines = [ln.strip() for ln in rest.splitlines() if ln.strip()]
        first = lines[0] if lines else "unsupported content"
        return first.split(". Please use")[0].rstrip(".")
    first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(err).__name__)
    if "weights_only" in first or "Weights only load failed" in first:
        return "not a tensors-only torch checkpoint"
    return first


def file_state_dict(path: str | Path) -> dict[str, Any]:
    """A state dict file, loaded without unpickling code (weights_only=True)."""
    import torch

    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise WeightsError(f"weights file {path} cannot be loaded as a state dict "
                           f"({_load_error_detail(e)}); it must hold tensors only: save it with "
                           "torch.save(model.state_dict(), PATH)") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise WeightsError(f"weights file {path} holds a {type(sd).__name__}, not a state dict")
    if sd and all(k.startswith("module.") for k in sd):  # saved from DataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def is_random(weights: str) -> int | None:
    """The seed of 'random:SEED', else None."""
    m = _RANDOM.match(weights)
    return int(m.group(1)) if m else None
