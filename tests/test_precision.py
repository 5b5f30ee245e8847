"""Precision follows the hardware: bf16 only where it runs natively, float32 elsewhere, a warning when forced."""

from __future__ import annotations

import logging

import pytest

from genrec import precision


@pytest.fixture
def cpu(monkeypatch):
    """Pretend to be a CPU with the given bf16 flags (None: torch cannot tell) on x86 or elsewhere."""

    def pretend(avx512_bf16, amx, x86=True, probe_ratio=None):
        precision.cpu_native_bf16.cache_clear()
        monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: {"avx512_bf16": avx512_bf16, "amx": amx})
        monkeypatch.setattr(precision, "_x86", lambda: x86)
        monkeypatch.setattr(precision, "_measured_bf16_ratio", lambda: probe_ratio)

    yield pretend
    precision.cpu_native_bf16.cache_clear()


@pytest.mark.parametrize("flags, x86, ratio, native", [
    ((False, False), True, None, False),  # AVX2-only x86: float32, no probe needed
    ((True, False), True, None, True),  # AVX512-BF16
    ((False, True), True, None, True),  # AMX (Sapphire Rapids and later)
    ((None, None), False, 0.8, True),  # an ARM CPU where the measured probe shows bf16 as fast as float32
    ((None, None), False, 3.0, False),  # an ARM CPU that emulates bf16
])
def test_auto_picks_bf16_only_where_native(cpu, flags, x86, ratio, native):
    cpu(*flags, x86=x86, probe_ratio=ratio)
    assert precision.native_bf16("cpu") is native
    assert precision.resolve_bf16(None, "cpu") is native


def test_forcing_bf16_on_emulating_hardware_warns_how_much_slower(cpu, caplog):
    cpu(False, False)
    with caplog.at_level(logging.WARNING, logger="genrec.precision"):
        assert precision.resolve_bf16(True, "cpu") is True
    assert "slower than float32" in caplog.text and precision.EMULATED_SLOWDOWN in caplog.text
    caplog.clear()
    assert precision.resolve_bf16(False, "cpu") is False and not caplog.text


@pytest.mark.parametrize("native, requested, expected", [
    (False, None, False),  # AVX2 CPU, unset: float32
    (True, None, True),  # AVX512-BF16 CPU, unset: bf16
    (False, True, True),  # forced on: honoured (with the warning)
    (True, False, False),  # forced off
])
def test_sft_config_resolves_bf16_from_the_hardware(cpu, tmp_path, native, requested, expected):
    from genrec.sft import GenRecSFTConfig

    cpu(native, False)
    kwargs = {} if requested is None else {"bf16": requested}
    args = GenRecSFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **kwargs)
    assert args.bf16 is expected and args.mixed_precision == ("bf16" if expected else "no")


@pytest.mark.parametrize("trained, native, requested, expected", [
    (True, False, None, False),  # trained in bf16 on a GPU, served on an AVX2 CPU: float32
    (True, True, None, True),  # the training choice where the hardware has it
    (False, True, None, False),  # trained in float32: stays float32
    (None, True, None, True),  # unknown training precision: the hardware decides
    (False, True, True, True),  # explicit request wins
])
def test_ranking_precision(cpu, trained, native, requested, expected):
    import torch

    from genrec.recommender import Recommender

    cpu(native, False)
    rec = Recommender.__new__(Recommender)  # precision logic only: no trie or tokenizer needed
    rec.model, rec.bf16 = torch.nn.Linear(1, 1), trained
    assert rec.use_bf16(requested) is expected
