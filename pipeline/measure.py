"""Measuring this process and machine: parameter counts, resident memory, what we ran on.

One home for figures that reports, benchmarks and validation all print, so they agree.
Torch is imported only by the functions that take modules.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any


def cpu_count() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def count_parameters(module: Any) -> dict[str, int]:
    """{"trainable", "frozen", "total"} parameter counts of a torch module (None -> zeros)."""
    params = list(module.parameters()) if module is not None else []
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    return {"trainable": trainable, "frozen": total - trainable, "total": total}


def weights_bytes(module: Any) -> int:
    """Bytes held by a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


# -- resident memory ------------------------------------------------------------------------

def _status_kib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return float(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}; memory figures need Linux")


def rss_mb() -> float:
    """Current resident set size (VmRSS) in MiB."""
    return _status_kib("VmRSS") / 1024.0


def peak_rss_mb() -> float:
    """Peak resident set size of this process's life so far (ru_maxrss, KiB on Linux), MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _reset_peak() -> bool:
    # Writing "5" to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


_LIBC: Any = None


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc): otherwise memory cached from an earlier,
    larger pass stays resident, the "before" figure already contains it and a peak looks free."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
        except OSError:  # pragma: no cover - not glibc
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


class RssPeak:
    """Peak RSS (MiB) while a block runs: the kernel's VmHWM after a reset where allowed, else
    VmRSS sampled every `every_s` seconds. `before`, `peak` and `method` are set on exit."""

    def __init__(self, every_s: float = 0.001, trim: bool = True) -> None:
        self.every_s, self.trim = every_s, trim
        self.before = self.peak = 0.0
        self.method = ""

    def __enter__(self) -> RssPeak:
        if self.trim:
            trim_heap()
        self.before = self.peak = rss_mb()
        self._hwm = _reset_peak()
        self._stop = threading.Event()
        self._t = None
        if not self._hwm:
            self._t = threading.Thread(target=self._loop, daemon=True)
            self._t.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.peak = max(self.peak, rss_mb())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._t is not None:
            self._t.join()
        now = rss_mb()
        if self._hwm:
            self.peak, self.method = max(_status_kib("VmHWM") / 1024.0, self.before), "VmHWM"
        else:
            self.peak = max(self.peak, now)
            self.method = f"VmRSS sampled every {self.every_s * 1000:g} ms"


def peak_rss(fn: Callable[[], Any]) -> tuple[float, float, str]:
    """Run fn; return (RSS before, peak RSS during, method) in MiB."""
    with RssPeak() as m:
        fn()
    return m.before, m.peak, m.method


# -- the machine ----------------------------------------------------------------------------

def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "flags") and key not in out:
                out[key] = value.strip()
    except OSError:
        pass
    return out


# CPU flags that decide which kernels torch and numpy can use for the model's matmuls.
RELEVANT_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16",
                  "amx_tile", "amx_int8", "avx_vnni")


def machine_info() -> dict[str, Any]:
    """What a figure was measured on: CPU model and its relevant flags, usable cores
    (sched_getaffinity), memory, load average, Python and torch (if loaded) with its threads."""
    import sys

    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    out: dict[str, Any] = {
        "cpu": info.get("model name") or platform.processor() or platform.machine(),
        "cpu_flags": [f for f in RELEVANT_FLAGS if f in flags],
        "cores": cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        out["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                  / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        out["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    # thread settings from the environment decide how OpenMP/MKL share the cores
    env = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY",
                                      "GOMP_SPINCOUNT", "KMP_BLOCKTIME") if k in os.environ}
    if env:
        out["thread_env"] = env
    torch = sys.modules.get("torch")
    if torch is not None:
        out["torch"] = torch.__version__
        out["torch_threads"] = torch.get_num_threads()
        out["torch_interop_threads"] = torch.get_num_interop_threads()
        out["mkldnn_bf16"] = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return out


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One line for tables: 'AMD EPYC ..., 2 cores, 24 GiB, load 0.1'."""
    info = info or machine_info()
    mem = f", {info['memory_gib']:.0f} GiB" if "memory_gib" in info else ""
    load = f", load {info['load_average'][0]:.2f}" if "load_average" in info else ""
    return f"{info['cpu']}, {info['cores']} cores{mem}{load}"


# -- the machine's compute ceiling (roofline) -----------------------------------------------

def _best_gflops(make_op: Callable[[], Callable[[], Any]], flops: float,
                 threads: int | None, repeats: int) -> float:
    """Best-of-`repeats` GFLOP/s of the op `make_op()` builds (inputs made once, one warm-up
    call first: kernel selection, first touch of the output), at `threads` torch threads
    (None: as set). The caller's thread setting is restored."""
    import time

    import torch

    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            op = make_op()
            op()
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                op()
                best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return flops / best / 1e9


def matmul_peak_gflops(dtype: str = "float32", threads: int | None = None, n: int = 2048,
                       repeats: int = 10) -> float:
    """Best-of-`repeats` GFLOP/s of torch.mm on two (n, n) `dtype` matrices: the dense-compute
    ceiling torch reaches on this machine, counted as 2 n^3 FLOPs per product."""
    import torch

    def make() -> Callable[[], Any]:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=gen).to(getattr(torch, dtype))
        b = torch.randn(n, n, generator=gen).to(getattr(torch, dtype))
        return lambda: torch.mm(a, b)

    return _best_gflops(make, 2.0 * n ** 3, threads, repeats)


def _in_both_precisions(fn: Callable[..., float], **kwargs: Any) -> dict[str, float]:
    return {p: fn(dt, **kwargs) for p, dt in (("fp32", "float32"), ("bf16", "bfloat16"))}


def matmul_peaks(threads: int | None = None, n: int = 2048, repeats: int = 10
                 ) -> dict[str, float]:
    """{"fp32": GFLOP/s, "bf16": GFLOP/s}: matmul_peak_gflops in the two precisions extract
    runs, the roofline that benchmarks and validation judge throughput against."""
    return _in_both_precisions(matmul_peak_gflops, threads=threads, n=n, repeats=repeats)


# The conv probe: a ResNet-50 stage-3-like 3x3 convolution (batch 8, 256 -> 256 channels,
# 56 x 56, channels-last). oneDNN's direct convolutions beat torch.mm's 2048^2 product here
# (~1.2x in fp32), so the matmul is not a ceiling for a network of convolutions.
CONV_PROBE = {"batch": 8, "channels": 256, "side": 56, "kernel": 3}


def conv_peak_gflops(dtype: str = "float32", threads: int | None = None,
                     repeats: int = 10) -> float:
    """Best-of-`repeats` GFLOP/s of one CONV_PROBE convolution in `dtype`, 2 FLOPs per
    multiply-add."""
    import torch

    n, c, s, k = (CONV_PROBE[f] for f in ("batch", "channels", "side", "kernel"))

    def make() -> Callable[[], Any]:
        gen = torch.Generator().manual_seed(0)
        dt = getattr(torch, dtype)
        x = torch.randn(n, c, s, s, generator=gen).to(dt).contiguous(
            memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(c, c, k, padding=k // 2, bias=False).to(dt).eval()
        conv = conv.to(memory_format=torch.channels_last)
        return lambda: conv(x)

    return _best_gflops(make, 2.0 * n * s * s * c * c * k * k, threads, repeats)


def conv_peaks(threads: int | None = None, repeats: int = 10) -> dict[str, float]:
    """{"fp32": GFLOP/s, "bf16": GFLOP/s}: conv_peak_gflops in the two precisions."""
    return _in_both_precisions(conv_peak_gflops, threads=threads, repeats=repeats)


def model_gflops(model: Any, image_size: int) -> float:
    """GFLOP of one (1, 3, S, S) forward of `model`, counted by torch.utils.flop_counter
    (2 FLOPs per multiply-add of convolutions and matmuls; elementwise ops not counted)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() / 1e9


def roofline_fraction(images_per_s: float, gflop_per_image: float, peak_gflops: float) -> float:
    """Share of the machine's peak that a throughput uses: img/s x GFLOP/img / peak GFLOP/s.
    Above 1.0 the figure is impossible on this machine (measured elsewhere, or mis-timed)."""
    return images_per_s * gflop_per_image / peak_gflops if peak_gflops > 0 else float("inf")


# -- who else used the CPU ------------------------------------------------------------------

def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    total = sum(vals[:8])  # guest time is already counted in user
    return total - idle, total


def _own_jiffies() -> int:
    """utime + stime clock ticks of this process, all its threads."""
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


class CpuShare:
    """CPU used by *other* processes while a block runs, as a share of the machine's cores:
    a timing is only worth quoting when this is near 0 (the load average lags by a minute and
    counts this process too). Linux only; `other_share` is None elsewhere."""

    def __enter__(self) -> CpuShare:
        self.other_share: float | None = None
        self.own_share: float | None = None
        try:
            self._busy, self._total = _cpu_jiffies()
            self._own = _own_jiffies()
        except OSError:
            self._busy = None
        return self

    def __exit__(self, *exc: object) -> None:
        if self._busy is None:
            return
        busy, total = _cpu_jiffies()
        own = _own_jiffies() - self._own
        span = max(total - self._total, 1)
        self.own_share = own / span
        self.other_share = max(busy - self._busy - own, 0) / span
