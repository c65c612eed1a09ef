"""EnginePool: one engine per settings, a dropped one is made again, all are closed on exit."""

from pathlib import Path

import pytest

from genair_core.config import LlmConfig
from genair_core.engines import EnginePool, generation_settings

MODEL = Path("/models/m")


class FakeEngine:
    name = "fake"

    def __init__(self, fail_close: bool = False) -> None:
        self.closed = 0
        self.fail_close = fail_close

    def close(self) -> None:
        self.closed += 1
        if self.fail_close:
            raise RuntimeError("close failed")


class Factory:
    def __init__(self, fail_close: bool = False) -> None:
        self.calls: list[tuple] = []
        self.made: list[FakeEngine] = []
        self.fail_close = fail_close

    def __call__(self, name, model_dir, settings, **options) -> FakeEngine:
        self.calls.append((name, model_dir, settings, options))
        self.made.append(FakeEngine(self.fail_close))
        return self.made[-1]


def test_one_engine_per_settings_made_with_the_llm_settings():
    factory = Factory()
    llm = LlmConfig()
    with EnginePool(factory) as engines:
        first = engines.engine(llm, MODEL)
        assert engines.engine(LlmConfig(), MODEL) is first
        other = engines.engine(LlmConfig(seed=1), MODEL)
        hf = engines.engine(LlmConfig(engine="transformers"), MODEL)
        assert len({id(first), id(other), id(hf)}) == 3
    assert factory.calls[0] == ("vllm", MODEL, generation_settings(llm), {"kv_cache_gib": 1.0})
    assert factory.calls[2][0] == "transformers"
    assert factory.calls[2][3] == {}
    assert [e.closed for e in factory.made] == [1, 1, 1]


def test_a_dropped_engine_is_closed_and_made_again():
    factory = Factory()
    llm = LlmConfig()
    with EnginePool(factory) as engines:
        first = engines.engine(llm, MODEL)
        engines.drop(first)
        assert first.closed == 1
        second = engines.engine(llm, MODEL)
        assert second is not first
        engines.drop(first)  # already gone: nothing happens
    assert (first.closed, second.closed) == (1, 1)
    assert len(factory.calls) == 2


def test_a_failing_close_does_not_stop_the_others(caplog):
    factory = Factory(fail_close=True)
    with EnginePool(factory) as engines:
        engines.engine(LlmConfig(seed=1), MODEL)
        engines.engine(LlmConfig(seed=2), MODEL)
    assert [e.closed for e in factory.made] == [1, 1]
    assert caplog.text.count("closing the fake engine failed") == 2


def test_engines_are_closed_when_the_block_raises():
    factory = Factory()

    def failing_stage() -> None:
        with EnginePool(factory) as engines:
            engines.engine(LlmConfig(), MODEL)
            raise KeyError("boom")

    with pytest.raises(KeyError):
        failing_stage()
    assert factory.made[0].closed == 1
