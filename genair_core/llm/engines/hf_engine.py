"""The transformers engine: the same archetypes and vectors where vLLM is not installed.

generate: batched `model.generate` with left padding. Sampling is done here, not by HF's
    `do_sample`: repetition penalty → temperature → top-p → Gumbel-max with one torch.Generator
    per row, seeded by `request_seed(seed, prompt)`. A row's random stream is then its own, so an
    item's archetype does not depend on its batch (HF's sampler draws every row from one global
    stream). No top-k, like vLLM; the reference code also had HF's default top_k=50.
embed: one teacher-forced forward pass of the backbone (no LM head) over prompt + completion,
    right-padded with an attention mask, per micro-batch of rows sorted by length. Row i's
    prompt span is [0, len(prompt_i)) and its completion span [len(prompt_i), len(prompt_i) +
    n_gen_i) where n_gen_i stops at the first EOS, in that row's own coordinates. This avoids the
    reference code's two bugs (method.md stage 3): its completion split used the unpadded prompt
    length on left-padded rows, and it averaged steps after a row's EOS.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

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

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFEngine:
    """ArchetypeEngine on transformers; also accepts an already loaded model (tests)."""

    name = "transformers"

    def __init__(
        self,
        model_dir: Path | None,
        settings: GenerationSettings,
        *,
        batch_size: int = 16,
        device: str | None = None,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.settings = settings
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if model is None:
            if model_dir is None:
                raise ValueError("give model_dir or an already loaded model")
            model = AutoModelForCausalLM.from_pretrained(
                model_dir, dtype=_DTYPES[self.settings.dtype], local_files_only=True
            )
        if tokenizer is None and model_dir is not None:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        self.model = model.eval().to(self.device)
        self.tokenizer = tokenizer
        self.hidden_size = int(self.model.config.hidden_size)
        if model_dir is not None:
            self.eos_token_ids = load_eos_token_ids(Path(model_dir), tokenizer)
        else:
            eos = self.model.config.eos_token_id
            if eos is None:
                raise ValueError("the model's config names no eos_token_id")
            self.eos_token_ids = frozenset(eos if isinstance(eos, list) else [eos])
        pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
        self.pad_token_id = int(pad) if pad is not None else min(self.eos_token_ids)

    def render(self, prompt: str) -> str:
        return render_chat(self.tokenizer, prompt)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def generate(self, prompts: list[str]) -> list[Completion]:
        if self.tokenizer is None:
            raise ValueError("generate needs a tokenizer")
        completions: list[Completion] = []
        for start in range(0, len(prompts), self.batch_size):
            completions += self._generate_batch(prompts[start : start + self.batch_size])
        return completions

    def embed(
        self, prompt_ids: Sequence[Sequence[int]], completion_ids: Sequence[Sequence[int]]
    ) -> list[Embedding]:
        check_embed_inputs(prompt_ids, completion_ids)
        spans = [
            (len(p), completion_span(c, self.eos_token_ids))
            for p, c in zip(prompt_ids, completion_ids, strict=True)
        ]
        rows = [
            [int(t) for t in p] + [int(t) for t in c[:n_gen]]
            for p, c, (_, n_gen) in zip(prompt_ids, completion_ids, spans, strict=True)
        ]
        # Rows of similar length share a micro-batch: less padding, same result (right padding
        # under a causal mask leaves every real token's state unchanged).
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        result: dict[int, Embedding] = {}
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            hidden = self._last_hidden([rows[i] for i in chunk])  # (B, T, H) float32 on CPU
            for b, i in enumerate(chunk):
                n_prompt, n_gen = spans[i]
                result[i] = span_means(hidden[b, : n_prompt + n_gen].numpy(), n_prompt, n_gen)
        return [result[i] for i in range(len(rows))]

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> HFEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @torch.inference_mode()
    def _last_hidden(self, rows: list[list[int]]) -> torch.Tensor:
        B, T = len(rows), max(len(r) for r in rows)
        input_ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((B, T), dtype=torch.long)
        for b, row in enumerate(rows):
            input_ids[b, : len(row)] = torch.tensor(row, dtype=torch.long)
            attention_mask[b, : len(row)] = 1
        # The backbone (LlamaModel for LlamaForCausalLM) ends with the final norm and skips the
        # LM head, which at 135M costs a fifth of the forward pass for nothing here.
        backbone = self.model.base_model
        out = backbone(
            input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device)
        )
        return out.last_hidden_state.float().cpu()  # (B, T, H)

    @torch.inference_mode()
    def _generate_batch(self, prompts: list[str]) -> list[Completion]:
        from transformers import GenerationConfig, LogitsProcessorList

        s = self.settings
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        config = GenerationConfig(
            do_sample=False,  # argmax over Gumbel-perturbed scores: sampling, see module doc
            max_new_tokens=s.max_new_tokens,
            eos_token_id=sorted(self.eos_token_ids),
            pad_token_id=self.pad_token_id,
            # Unset fields are filled from the model's generation_config.json; a penalty there
            # would be applied on top of ours.
            repetition_penalty=1.0,
        )
        sampler = LogitsProcessorList(
            [
                _RepetitionPenalty(s.repetition_penalty),
                _TemperatureTopP(s.temperature, s.top_p),
                _SeededGumbel([request_seed(s.seed, p) for p in prompts]),
            ]
        )
        sequences = self.model.generate(
            input_ids=enc["input_ids"].to(self.device),
            attention_mask=enc["attention_mask"].to(self.device),
            generation_config=config,
            logits_processor=sampler,
        ).cpu()  # (B, T_prompt_padded + T_new)
        width = enc["input_ids"].shape[1]
        completions = []
        for b in range(len(prompts)):
            prompt = enc["input_ids"][b][enc["attention_mask"][b].bool()].tolist()
            new = sequences[b, width:].tolist()
            n = completion_span(new, self.eos_token_ids)
            ended = n > 0 and new[n - 1] in self.eos_token_ids
            ids = tuple(new[:n])
            completions.append(
                Completion(
                    text=self.tokenizer.decode(ids, skip_special_tokens=True),
                    prompt_token_ids=tuple(prompt),
                    completion_token_ids=ids,
                    finish_reason="stop" if ended else "length",
                )
            )
        return completions


class _RepetitionPenalty:
    """CTRL-style penalty over every token seen so far (prompt included), as HF and vLLM do."""

    def __init__(self, penalty: float) -> None:
        self.penalty = penalty

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.penalty == 1.0:
            return scores
        seen = torch.gather(scores, 1, input_ids)  # (B, T)
        seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
        return scores.scatter(1, input_ids, seen)


class _TemperatureTopP:
    """Divide by the temperature, then keep the smallest set of tokens whose probability mass
    reaches top_p (at least one token)."""

    def __init__(self, temperature: float, top_p: float) -> None:
        self.temperature = temperature
        self.top_p = top_p

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float() / self.temperature  # (B, V)
        if self.top_p >= 1.0:
            return scores
        sorted_scores, sorted_idx = torch.sort(scores, descending=True, dim=-1)
        cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        drop = (cum - sorted_scores.softmax(dim=-1)) >= self.top_p  # mass before this token
        drop[:, 0] = False
        drop = drop.scatter(1, sorted_idx, drop)
        return scores.masked_fill(drop, float("-inf"))


class _SeededGumbel:
    """Gumbel-max: argmax(log_softmax(scores) + G) is a sample of softmax(scores). One generator
    per row, so row b's draws depend only on its own seed."""

    def __init__(self, seeds: list[int]) -> None:
        self.generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        V = scores.shape[1]
        u = torch.stack([torch.rand(V, generator=g, dtype=torch.float64) for g in self.generators])
        gumbel = -torch.log(-torch.log(u.clamp(min=1e-300)))  # (B, V)
        return scores.float().log_softmax(dim=-1) + gumbel.to(scores.device, torch.float32)
