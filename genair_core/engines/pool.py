"""The engines of one run: each made on first use, shared by every batch, closed at the end.

    with EnginePool(make_engine) as engines:
        engine = engines.engine(llm, model_dir)  # the same object for every batch of the run
        ...
        engines.drop(engine)  # after a failure it may have caused: the next call makes a new one

Leaving the block closes every engine (vLLM's engine-core processes included); a close that
fails is logged and the others are still closed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from genair_core.config import LlmConfig
from genair_core.engines.base import ArchetypeEngine, GenerationSettings, generation_settings

# make_engine's signature: (name, model_dir, settings, **options) -> engine.
EngineFactory = Callable[..., ArchetypeEngine]
EngineKey = tuple[str, Path, GenerationSettings, tuple[tuple[str, Any], ...]]

logger = logging.getLogger(__name__)


class EnginePool:
    """Engines keyed by what they load and how they sample, made by `factory`."""

    def __init__(self, factory: EngineFactory) -> None:
        self._factory = factory
        self._engines: dict[EngineKey, ArchetypeEngine] = {}

    def engine(self, llm: LlmConfig, model_dir: Path) -> ArchetypeEngine:
        """The engine `llm` asks for on the model in `model_dir`, made on first use."""
        settings = generation_settings(llm)
        options = engine_options(llm)
        key = (llm.engine, Path(model_dir), settings, tuple(sorted(options.items())))
        if key not in self._engines:
            self._engines[key] = self._factory(llm.engine, model_dir, settings, **options)
        return self._engines[key]

    def drop(self, engine: ArchetypeEngine) -> None:
        """Close `engine` and forget it (it may have died)."""
        for key, held in list(self._engines.items()):
            if held is engine:
                del self._engines[key]
                _close_quietly(engine)

    def close(self) -> None:
        """Close every engine; the pool can make new ones afterwards."""
        while self._engines:
            _, engine = self._engines.popitem()
            _close_quietly(engine)

    def __enter__(self) -> EnginePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def engine_options(llm: LlmConfig) -> dict[str, Any]:
    """The engine-specific options of `llm`, as `make_engine` takes them."""
    return {"kv_cache_gib": llm.kv_cache_gib} if llm.engine == "vllm" else {}


def _close_quietly(engine: ArchetypeEngine) -> None:
    try:
        engine.close()
    except Exception:  # the error being handled, if any, matters more than this one
        logger.exception("closing the %s engine failed", engine.name)
