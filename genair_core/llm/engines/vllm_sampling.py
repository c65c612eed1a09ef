"""genair's sampler filters as vLLM V1 logits processors (imported by vLLM's model worker).

VllmEngine asks vLLM's own sampler for temperature only (top_p 1, no top_k, no penalty) and
passes the rest in `SamplingParams.extra_args[EXTRA_ARGS_KEY]`, read here:

    SeenTokenPenalty   not argmax-invariant: vLLM runs it before temperature, where its own
                       repetition penalty would run
    TopKTopP           argmax-invariant: vLLM runs it after temperature, where its own
                       top-k/top-p would run

so the order stays penalty → temperature → top-k → top-p → vLLM's seeded draw, and the
distribution is the one HF `generate` samples (tests/test_sampling.py). Requests without the key
are left alone.
"""

from __future__ import annotations

from typing import Any

import torch
from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.interface import MoveDirectionality

from genair_core.llm.engines.sampling import DEFAULT_CANDIDATES, penalize_seen, top_k_top_p

EXTRA_ARGS_KEY = "genair_sampling"


def sampling_extra_args(top_k: int, top_p: float, repetition_penalty: float) -> dict[str, Any]:
    """The `extra_args` that make these processors apply top_k, top_p and the penalty."""
    return {
        EXTRA_ARGS_KEY: {
            "top_k": int(top_k),
            "top_p": float(top_p),
            "repetition_penalty": float(repetition_penalty),
        }
    }


def _settings(params: SamplingParams) -> dict[str, Any] | None:
    extra = params.extra_args or {}
    return extra.get(EXTRA_ARGS_KEY)


class _RowTable:
    """Per-request values kept by batch row, moved as vLLM moves requests within its batch."""

    def __init__(self, columns: int, fill: float | int, dtype: torch.dtype) -> None:
        self.values = torch.full((0, columns), fill, dtype=dtype)
        self.fill = fill

    def ensure(self, rows: int, columns: int = 0) -> None:
        have_rows, have_columns = self.values.shape
        if rows <= have_rows and columns <= have_columns:
            return
        new_rows = have_rows if rows <= have_rows else max(rows, 2 * have_rows)
        new_columns = have_columns if columns <= have_columns else max(columns, 2 * have_columns)
        grown = torch.full((new_rows, new_columns), self.fill, dtype=self.values.dtype)
        grown[:have_rows, :have_columns] = self.values
        if new_columns > have_columns:  # padding repeats each row's first value
            grown[:have_rows, have_columns:] = self.values[:, :1]
        self.values = grown

    def move(self, a: int, b: int, swap: bool) -> None:
        self.ensure(max(a, b) + 1)
        if swap:
            self.values[[a, b]] = self.values[[b, a]]
        else:
            self.values[b] = self.values[a]


class SeenTokenPenalty(LogitsProcessor):
    """Repetition penalty over the tokens a request has seen, gathered and scattered sparsely.

    Each batch row's prompt + output token ids sit in one row of a (rows, capacity) table,
    padded with the row's first token (a repeat, so harmless); rows without a penalty have 1.
    """

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.tokens = _RowTable(256, 0, torch.long)
        self.penalty = _RowTable(1, 1.0, torch.float32)
        self.n_seen: dict[int, int] = {}  # active rows: tokens in the table
        self.outputs: dict[int, list[int]] = {}  # active rows: vLLM's live output list
        self.n_output: dict[int, int] = {}  # active rows: output tokens already in the table

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        s = _settings(sampling_params)
        if s is not None and not s["repetition_penalty"] > 0:
            raise ValueError(f"repetition_penalty must be > 0, got {s['repetition_penalty']}")

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for row in batch_update.removed:
            self._drop(row)
        for row, params, prompt, output in batch_update.added:
            s = _settings(params)
            if s is None or s["repetition_penalty"] == 1.0:
                self._drop(row)
                continue
            seen = list(prompt or []) + list(output)
            self.tokens.ensure(row + 1, len(seen))
            self.penalty.ensure(row + 1)
            self.tokens.values[row] = seen[0] if seen else 0
            self.tokens.values[row, : len(seen)] = torch.tensor(seen, dtype=torch.long)
            self.penalty.values[row] = s["repetition_penalty"]
            self.n_seen[row], self.outputs[row], self.n_output[row] = len(seen), output, len(output)
        for a, b, direction in batch_update.moved:
            swap = direction == MoveDirectionality.SWAP
            self.tokens.move(a, b, swap)
            self.penalty.move(a, b, swap)
            for state in (self.n_seen, self.outputs, self.n_output):
                a_value, b_value = state.pop(a, None), state.pop(b, None)
                if a_value is not None:
                    state[b] = a_value
                if swap and b_value is not None:
                    state[a] = b_value
            if not swap:
                self.penalty.ensure(a + 1)
                self.penalty.values[a] = 1.0

    def _drop(self, row: int) -> None:
        if self.n_seen.pop(row, None) is not None:
            self.outputs.pop(row)
            self.n_output.pop(row)
            self.penalty.values[row] = 1.0

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.n_seen:
            return logits
        rows, columns, new = [], [], []
        for row, output in self.outputs.items():
            done, start = self.n_output[row], self.n_seen[row]
            if len(output) > done:
                if start == 0:  # no token before: the padding becomes this first token
                    self.tokens.values[row] = output[done]
                added = output[done:]
                rows += [row] * len(added)
                columns += range(start, start + len(added))
                new += added
                self.n_seen[row] = start + len(added)
                self.n_output[row] = len(output)
        if new:
            self.tokens.ensure(max(rows) + 1, max(columns) + 1)
            self.tokens.values[rows, columns] = torch.tensor(new, dtype=torch.long)
        n_rows = logits.shape[0]
        self.tokens.ensure(n_rows)
        self.penalty.ensure(n_rows)
        width = max(self.n_seen.values())
        seen = self.tokens.values[:n_rows, :width]
        penalty = self.penalty.values[:n_rows].to(logits.dtype).expand(n_rows, width)
        rows_index = torch.arange(n_rows).unsqueeze(1).expand(n_rows, width)
        return penalize_seen(logits, rows_index.reshape(-1), seen.reshape(-1), penalty.reshape(-1))


class TopKTopP(LogitsProcessor):
    """Top-k then exact top-p over a partial sort (genair_core.llm.engines.sampling.top_k_top_p)."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        self.top_k = _RowTable(1, 0, torch.long)  # 0: off
        self.top_p = _RowTable(1, 1.0, torch.float32)  # 1: off
        self.active: set[int] = set()
        self.candidates = DEFAULT_CANDIDATES

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        s = _settings(sampling_params)
        if s is None:
            return
        if not 0 < s["top_p"] <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {s['top_p']}")
        if s["top_k"] < 0:
            raise ValueError(f"top_k must be >= 0 (0: off), got {s['top_k']}")

    def is_argmax_invariant(self) -> bool:
        return True  # the largest logit always survives top-k and top-p

    def update_state(self, batch_update: BatchUpdate | None) -> None:
        if batch_update is None:
            return
        for row in batch_update.removed:
            self._set(row, 0, 1.0)
        for row, params, _, _ in batch_update.added:
            s = _settings(params)
            self._set(row, *((s["top_k"], s["top_p"]) if s is not None else (0, 1.0)))
        for a, b, direction in batch_update.moved:
            swap = direction == MoveDirectionality.SWAP
            self.top_k.move(a, b, swap)
            self.top_p.move(a, b, swap)
            if not swap:
                self._set(a, 0, 1.0)
        self.active = {
            int(r)
            for r in ((self.top_k.values[:, 0] > 0) | (self.top_p.values[:, 0] < 1)).nonzero()
        }

    def _set(self, row: int, k: int, p: float) -> None:
        self.top_k.ensure(row + 1)
        self.top_p.ensure(row + 1)
        self.top_k.values[row] = k
        self.top_p.values[row] = p

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return logits
        n_rows = logits.shape[0]
        self.top_k.ensure(n_rows)
        self.top_p.ensure(n_rows)
        top_k = self.top_k.values[:n_rows, 0]
        top_p = self.top_p.values[:n_rows, 0].to(logits.dtype)
        return top_k_top_p(logits, top_k, top_p, self.candidates)
