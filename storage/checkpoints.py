"""A training run's checkpoints on disk: safetensors for tensors, JSON for the rest, no pickle.

    <root>/models/recommenders/<run name>/     Store.recommender_dir
        best.safetensors                      the finished run's best weights (save_weights)
        checkpoints-<run_id>/                 Store.checkpoint_dir: one folder per run key
            .lock                             held while the run trains; names its holder
            state.json                        the trainer state; names the files below
            epoch-0007.safetensors            model weights after the last completed epoch
            epoch-0007.optim.safetensors      Adam's moments and step counts
            best-epoch-0005.safetensors       weights of the best validation epoch so far

Files are written under new names first and `state.json` is replaced last (atomically), then the
files it no longer names are deleted; a crash at any point leaves a state.json whose files are all
present, so a retried task resumes from the last completed epoch, never from a half-written one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from storage import locks
from storage.store import atomic_write_bytes

FORMAT = "genair-checkpoint/1"
LOCK = ".lock"


class CheckpointError(ValueError):
    """A checkpoint folder exists but its files are missing or unreadable."""


class RunCheckpoints:
    """The Checkpointer of genair_core.recommenders.training for one run's folder: the trainer
    state is a plain dict (stored as JSON), the model and optimizer state dicts are tensors."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the run's lock while training it. A cancelled flow can leave a task's thread
        training after the flow (and its storage lock) is gone; a new run of the same model then
        waits for it instead of writing the same checkpoints at the same time. The lock of a
        run killed while training is taken over, with a warning naming it (storage.locks)."""
        with locks.hold(self.folder / LOCK):
            yield

    @property
    def state_path(self) -> Path:
        return self.folder / "state.json"

    def load(self) -> tuple[dict, dict[str, torch.Tensor], dict] | None:
        if not self.state_path.is_file():
            return None
        record = self._record()
        model = self._tensors(record["model"])
        optimizer = _unflatten_optimizer(self._tensors(record["optimizer"]), record["param_groups"])
        return record["state"], model, optimizer

    def load_best(self) -> dict[str, torch.Tensor]:
        record = self._record()
        if record.get("best") is None:
            raise CheckpointError(f"{self.state_path}: no best checkpoint recorded")
        return self._tensors(record["best"])

    def save(
        self,
        state: dict,
        model: dict[str, torch.Tensor],
        optimizer: dict,
        best: dict[str, torch.Tensor] | None,
    ) -> None:
        previous = self._record() if self.state_path.is_file() else {}
        stem = f"epoch-{state['epoch']:04d}"
        record = {
            "format": FORMAT,
            "state": state,
            "model": f"{stem}.safetensors",
            "optimizer": f"{stem}.optim.safetensors",
            "param_groups": optimizer["param_groups"],
            "best": previous.get("best"),
        }
        self._write(record["model"], model)
        self._write(record["optimizer"], _flatten_optimizer(optimizer))
        if best is not None:
            record["best"] = f"best-{stem}.safetensors"
            self._write(record["best"], best)
        atomic_write_bytes(self.state_path, json.dumps(record, indent=1, sort_keys=True).encode())
        keep = {record["model"], record["optimizer"], record["best"], self.state_path.name}
        for path in self.folder.glob("*.safetensors"):
            if path.name not in keep:
                path.unlink(missing_ok=True)

    def clear(self) -> None:
        """Forget the run (a forced rerun starts from epoch 0). The lock file stays, since the
        caller may hold it; state.json goes first, so a crash part-way leaves no state that names
        a deleted file."""
        self.state_path.unlink(missing_ok=True)
        for path in self.folder.glob("*"):
            if path.name != LOCK:
                path.unlink(missing_ok=True)

    def _record(self) -> dict:
        try:
            record = json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"{self.state_path}: unreadable ({err})") from None
        if record.get("format") != FORMAT:
            raise CheckpointError(
                f"{self.state_path}: format {record.get('format')!r}, not {FORMAT}"
            )
        return record

    def _tensors(self, name: str) -> dict[str, torch.Tensor]:
        path = self.folder / name
        try:
            return load_file(path)
        except (OSError, SafetensorError) as err:
            raise CheckpointError(f"{path}: unreadable checkpoint ({err})") from None

    def _write(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write_bytes(self.folder / name, save(contiguous, metadata={"format": FORMAT}))


def save_weights(path: Path, weights: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A model's weights as one safetensors file (the best checkpoint a run publishes)."""
    contiguous = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    atomic_write_bytes(Path(path), save(contiguous, metadata={"format": FORMAT, **metadata}))


def _flatten_optimizer(optimizer: dict) -> dict[str, torch.Tensor]:
    """{"<param>.<name>": tensor} for every tensor of the optimizer's per-parameter state."""
    flat = {}
    for param, values in optimizer["state"].items():
        for name, value in values.items():
            flat[f"{param}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return flat


def _unflatten_optimizer(flat: dict[str, torch.Tensor], param_groups: list[dict]) -> dict:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        param, name = key.split(".", 1)
        state.setdefault(int(param), {})[name] = value
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in param_groups]
    return {"state": state, "param_groups": groups}
