"""Precision chosen from the hardware: bf16 only where it runs natively, float32 elsewhere.

bf16 autocast halves memory traffic on GPUs since Ampere and on CPUs with AVX512-BF16 or AMX, but on CPUs without
them (AVX2-only: most laptops, many AMD servers and CI runners) every bf16 op is emulated and a training step is
10-26x slower than in float32 (measured on an AVX2 AMD EPYC: 17 s vs 0.65 s per Industrial SFT step). So one
setting, ``bf16``, drives training, in-training ranking, evaluation, GRPO and serving, with three values:

- unset (None, the default): `auto` — bf16 where `native_bf16` says the device runs it natively, else float32;
- ``true``: bf16 even without native support (with a warning that says how much slower it will be);
- ``false``: float32.

Example:
    >>> resolve_bf16(False, "cpu")
    False
    >>> resolve_bf16(None, "cpu") in (True, False)
    True
"""

from __future__ import annotations

import functools
import logging
import platform
import time

import torch

logger = logging.getLogger(__name__)

# measured on an AVX2-only AMD EPYC (issue 13): Linear(384 -> 1536) fwd+bwd on 2,048 rows, and one SFT step
EMULATED_SLOWDOWN = "10-26x"


def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def cpu_bf16_flags() -> dict[str, bool | None]:
    """What torch reports about the CPU's bf16 support (None where this torch build cannot tell)."""
    flags: dict[str, bool | None] = {}
    for name, probe in (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx", "_is_amx_tile_supported")):
        fn = getattr(torch.cpu, probe, None)
        flags[name] = bool(fn()) if fn is not None else None
    return flags


def _measured_bf16_ratio(rows: int = 1024, repeats: int = 3) -> float:
    """bf16-autocast time / float32 time of a Linear fwd+bwd on this CPU (best of `repeats`)."""
    layer = torch.nn.Linear(384, 1536)
    x = torch.randn(rows, 384)

    def best(bf16: bool) -> float:
        times = []
        for _ in range(repeats + 1):  # the first run warms up kernels
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                layer(x).float().sum().backward()
            times.append(time.perf_counter() - start)
        return min(times[1:])

    return best(True) / max(best(False), 1e-9)


@functools.cache
def cpu_native_bf16() -> bool:
    """True when this CPU runs bf16 natively. On x86 the instruction-set flags decide (AVX512-BF16 or AMX); on
    other CPUs (e.g. ARM with or without BF16 extensions) a short measured probe decides: bf16 counts as native
    when it is no slower than float32."""
    flags = cpu_bf16_flags()
    if any(flags.values()):
        return True
    if _x86() and None not in flags.values():
        return False
    ratio = _measured_bf16_ratio()
    logger.info("bf16 probe on %s: bf16 autocast takes %.2fx the float32 time", platform.machine(), ratio)
    return ratio <= 1.0


def native_bf16(device: str | torch.device) -> bool:
    """Whether `device` runs bf16 natively (CUDA: compute capability; CPU: `cpu_native_bf16`)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        return cpu_native_bf16()
    return False  # mps, xpu, ...: float32 unless asked


def describe_device(device: str | torch.device) -> str:
    """A short description of the device for logs and run records, e.g. 'cpu AVX512 (avx512_bf16 yes, amx no)'."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        flags = ", ".join(f"{k} {'yes' if v else 'no' if v is not None else 'unknown'}"
                          for k, v in cpu_bf16_flags().items())
        return f"cpu {torch.backends.cpu.get_cpu_capability()} ({flags})"
    return device.type


def resolve_bf16(requested: bool | None, device: str | torch.device, what: str = "training") -> bool:
    """The bf16 decision for `what` on `device`: `requested` when set (warning when bf16 is asked for on hardware
    that would emulate it), else the hardware's native support. Logs the choice."""
    native = native_bf16(device)
    if requested is None:
        logger.info("precision for %s: %s (auto; %s)", what, "bf16" if native else "float32", describe_device(device))
        return native
    if requested and not native:
        logger.warning("bf16 was requested for %s, but %s has no native bf16: expect it to run about %s slower than "
                       "float32 (benchmarks/precision.py measures this machine). Leave bf16 unset (auto) or set "
                       "bf16: false.", what, describe_device(device), EMULATED_SLOWDOWN)
    return bool(requested)


def default_device(use_cpu: bool = False) -> str:
    return "cuda" if torch.cuda.is_available() and not use_cpu else "cpu"


def resolve_trainer_bf16(args, what: str) -> None:
    """Fill a TRL config's ``bf16`` before its own __post_init__ runs: unset means auto for the device it will train
    on (a CPU without use_cpu: true stays float32, since transformers accepts bf16 on a CPU only with that flag)."""
    if args.fp16:
        return
    device = default_device(args.use_cpu)
    if args.bf16 is None and device == "cpu" and not args.use_cpu:
        args.bf16 = False
    args.bf16 = resolve_bf16(args.bf16, device, what)


BF16_HELP = ("bf16 mixed precision for training and in-training ranking: unset = auto (bf16 only where the device "
             "runs it natively: bf16 GPUs, CPUs with AVX512-BF16 or AMX; float32 elsewhere); true forces it (with a "
             "warning where it would be emulated, 10-26x slower); false = float32.")
