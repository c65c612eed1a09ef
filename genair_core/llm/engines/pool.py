"""The engines of one run: each made on first use, shared by every batch, closed at the end.

    with EnginePool(make_engine) as engines:
        with engines.using(llm, model_dir) as engine:  # the same engine for every batch
            engine.generate(...)

An error inside `using` other than a bad input (ValueError, TypeError) closes and forgets the
engine, which may have died with it: the next `using`, e.g. the task's retry, makes a fresh one.
Leaving the pool closes every engine (vLLM's engine-core processes included); a close that fails
is logged and the others are still closed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from genair_core.config import LlmConfig
from genair_core.llm.engines.base import ArchetypeEngine, GenerationSettings, generation_settings

# make_engine's signature: (name, model_dir, settings, **options) -> engine.
EngineFactory = Callable[..., ArchetypeEngine]
EngineKey = tuple[str, Path, GenerationSettings, tuple[tuple[str, Any], ...]]
# Errors of the input handed to a healthy engine: it is kept for the next batch.
BAD_INPUT_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError)

logger = logging.getLogger(__name__)


class EnginePool:
    """Engines keyed by what they load and how they sample, made by `factory`."""

    def __init__(self, factory: EngineFactory) -> None:
        self._factory = factory
        self._engines: dict[EngineKey, ArchetypeEngine] = {}

    @property
    def factory(self) -> EngineFactory:
        """What makes the engines: another process builds a pool of its own from it."""
        return self._factory

    @contextlib.contextmanager
    def using(self, llm: LlmConfig, model_dir: Path) -> Iterator[ArchetypeEngine]:
        """The engine `llm` asks for on the model in `model_dir`, made on first use; dropped if
        the block raises anything but a bad input (BAD_INPUT_ERRORS)."""
        settings = generation_settings(llm)
        options = engine_options(llm)
        key = (llm.engine, Path(model_dir), settings, tuple(sorted(options.items())))
        if key not in self._engines:
            self._engines[key] = self._factory(llm.engine, model_dir, settings, **options)
        engine = self._engines[key]
        try:
            yield engine
        except BAD_INPUT_ERRORS:
            raise
        except Exception:
            if self._engines.get(key) is engine:  # not dropped already by a nested `using`
                del self._engines[key]
                _close_quietly(engine)
            raise

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
    """The engine-specific options of `llm`, as `make_engine` takes them (tensor parallelism
    only when asked for: 1 is vLLM's own default)."""
    if llm.engine != "vllm":
        return {}
    options: dict[str, Any] = {"kv_cache_gib": llm.kv_cache_gib}
    if llm.tensor_parallel_size > 1:
        options["tensor_parallel_size"] = llm.tensor_parallel_size
    return options


def _close_quietly(engine: ArchetypeEngine) -> None:
    try:
        engine.close()
    except Exception:  # the error being handled, if any, matters more than this one
        logger.exception("closing the %s engine failed", engine.name)
