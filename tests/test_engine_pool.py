"""EnginePool: one engine per settings, one that failed is made again, all are closed on exit."""

from pathlib import Path

import pytest

from genair_core.config import LlmConfig
from genair_core.llm.engines import EnginePool, generation_settings

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


def engine(engines: EnginePool, llm: LlmConfig) -> FakeEngine:
    with engines.using(llm, MODEL) as made:
        return made


def test_one_engine_per_settings_made_with_the_llm_settings():
    factory = Factory()
    llm = LlmConfig()
    with EnginePool(factory) as engines:
        first = engine(engines, llm)
        assert engine(engines, LlmConfig()) is first
        other = engine(engines, LlmConfig(seed=1))
        hf = engine(engines, LlmConfig(engine="transformers"))
        assert len({id(first), id(other), id(hf)}) == 3
    assert factory.calls[0] == ("vllm", MODEL, generation_settings(llm), {"kv_cache_gib": 1.0})
    assert factory.calls[2][0] == "transformers"
    assert factory.calls[2][3] == {}
    assert [e.closed for e in factory.made] == [1, 1, 1]


def test_an_engine_error_drops_the_engine_and_the_next_use_makes_a_new_one():
    factory = Factory()
    llm = LlmConfig()
    with EnginePool(factory) as engines:
        with pytest.raises(RuntimeError, match="engine died"), engines.using(llm, MODEL) as first:
            raise RuntimeError("engine died")
        assert first.closed == 1
        second = engine(engines, llm)
        assert second is not first
    assert (first.closed, second.closed) == (1, 1)
    assert len(factory.calls) == 2


@pytest.mark.parametrize("error", [ValueError, TypeError])
def test_a_bad_input_keeps_the_engine(error):
    factory = Factory()
    with EnginePool(factory) as engines:
        with pytest.raises(error), engines.using(LlmConfig(), MODEL) as first:
            raise error("bad prompt")
        assert first.closed == 0
        assert engine(engines, LlmConfig()) is first
    assert len(factory.calls) == 1


def test_a_failing_close_does_not_stop_the_others(caplog):
    factory = Factory(fail_close=True)
    with EnginePool(factory) as engines:
        engine(engines, LlmConfig(seed=1))
        engine(engines, LlmConfig(seed=2))
    assert [e.closed for e in factory.made] == [1, 1]
    assert caplog.text.count("closing the fake engine failed") == 2


def test_engines_are_closed_when_the_block_raises():
    factory = Factory()

    def failing_stage() -> None:
        with EnginePool(factory) as engines:
            engine(engines, LlmConfig())
            raise KeyError("boom")

    with pytest.raises(KeyError):
        failing_stage()
    assert factory.made[0].closed == 1
