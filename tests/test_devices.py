"""Torch's process-wide state is set for a block and restored after it (genair_core.devices)."""

import threading

import torch

from genair_core.devices import cpu_shared_by, seeded, torch_threads


def test_seeded_draws_as_manual_seed_and_restores_the_generator():
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    with seeded(7):
        inside = torch.rand(3)
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.manual_seed(7)
    assert torch.equal(inside, torch.rand(3))


def test_seeded_blocks_run_one_at_a_time_across_threads():
    entered, release, inside, seen = threading.Event(), threading.Event(), [False], []

    def first() -> None:
        with seeded(1):
            inside[0] = True
            entered.set()
            release.wait(60)
            inside[0] = False

    def second() -> None:
        with seeded(2):
            seen.append(inside[0])

    holder, other = threading.Thread(target=first), threading.Thread(target=second)
    holder.start()
    assert entered.wait(60)
    other.start()
    # Blocked while the first block runs, however long this waits: a wait that is too short on
    # a loaded machine only lets this check pass without showing anything, never fail.
    other.join(timeout=1.0)
    assert other.is_alive()
    release.set()
    holder.join(60)
    other.join(60)
    assert seen == [False]


def test_thread_counts_are_restored():
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with cpu_shared_by(64) as threads:
        assert threads == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
