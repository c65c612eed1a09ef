"""The recommender tasks on a small generated dataset: what a run writes, when it is skipped, and
the flow's runs `workers` at a time."""

import json
import threading
from pathlib import Path

import pytest
import torch
from prefect.logging import disable_run_logger
from small_dataset import write_small_dataset

import flows.training
import tasks.recommenders
from flows.pipeline import genair_full
from genair_core.recommenders.scoring import score_run
from storage.recommenders import read_run_ranks, read_run_tables
from storage.store import Store
from tasks.recommenders import train_recommender
from tasks.settings import load_settings

pytestmark = pytest.mark.usefixtures("prefect_harness")
RUN = {"run_key", "dataset", "backbone", "variant", "seed", "loss"}

TINY = """
[recommenders]
backbones = ["sasrec", "gru4rec"]
variants = ["id"]
seeds = [3, 4]
device = "cpu"
workers = 2
[recommenders.model]
hidden = 8
max_len = 6
[recommenders.training]
loss = "bce"
max_epochs = 2
batch_size = 4
[recommenders.evaluation]
negatives = 2
"""


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    """10 items, 8 users with 6 of them each (enough left over for 2 negatives per user), split
    and sampled up to the negatives stage."""
    folder = tmp_path_factory.mktemp("recommenders")
    config = write_small_dataset(folder)
    (folder / "catalog.csv").write_text(
        "item_id,title,genre\n" + "".join(f"i{i},Item {i},g{i % 3}\n" for i in range(10))
    )
    events = ["user_id,item_id,timestamp"]
    for user in range(8):
        events += [f"u{user},i{(user + 3 * step) % 10},{100 * user + step}" for step in range(6)]
    (folder / "events.csv").write_text("\n".join(events) + "\n")
    config.write_text(config.read_text() + TINY)
    genair_full(config_path=str(config), until="cooccurrence")
    genair_full(config_path=str(config), start="negatives", until="negatives")
    return config


def run_rows(store: Store, table: str, run: str) -> str:
    """A run's rows of `table` without the wall time, as JSON (a group without users has NaN
    metrics, which == would call different)."""
    return as_json(store.read_parts(table, run).to_pylist())


def as_json(rows: list[dict]) -> str:
    return json.dumps([{k: v for k, v in row.items() if k != "seconds"} for row in rows])


def train(config: Path, **env: str) -> dict[str, object]:
    with pytest.MonkeyPatch.context() as patch, disable_run_logger():
        for name, value in env.items():
            patch.setenv(name, value)
        return train_recommender.fn(load_settings(config), "sasrec", "id", 3)


def test_a_run_writes_its_rows_and_a_second_call_is_skipped(config):
    store = Store(config.parent / "data")
    first = train(config)
    assert first["skipped"] is False
    assert first["epochs"] == 2
    run = "sasrec-id-bce-s3"
    metrics = store.read_parts("metrics", run)
    assert metrics.num_rows == 2 * 2 * 5 * 6  # protocol × split × group × metric
    assert set(metrics["run_key"].to_pylist()) == {first["run_key"]}
    ranks = store.read_parts("eval_ranks", run)
    assert ranks.num_rows == 2 * 8  # valid and test of every user
    assert store.read_parts("training_log", run)["epoch"].to_pylist() == [1, 2]
    assert store.best_weights_path(run).is_file()
    before = {t: run_rows(store, t, run) for t in ("metrics", "eval_ranks", "training_log")}

    again = train(config)
    assert again["skipped"] is True
    assert {t: run_rows(store, t, run) for t in before} == before


def test_a_new_tail_share_rescores_without_retraining(config):
    store = Store(config.parent / "data")
    run = "sasrec-id-bce-s3"
    first = train(config)
    log, ranks = run_rows(store, "training_log", run), run_rows(store, "eval_ranks", run)
    summary = train(config, GENAIR_RECOMMENDERS__EVALUATION__TAIL_SHARE="0.6")
    assert summary["skipped"] is True
    assert run_rows(store, "training_log", run) == log
    assert run_rows(store, "eval_ranks", run) == ranks
    tables = read_run_tables(store, ["sequences"])
    columns = {k: v for k, v in store.read_parts("metrics", run).to_pylist()[0].items() if k in RUN}
    assert columns["run_key"] == first["run_key"]
    rescored = score_run(tables, read_run_ranks(store, run), 0.6, columns)
    assert run_rows(store, "metrics", run) == as_json(rescored)
    assert as_json(rescored) != as_json(score_run(tables, read_run_ranks(store, run), 0.2, columns))


def test_a_changed_training_setting_retrains_from_scratch(config):
    store = Store(config.parent / "data")
    train(config)
    summary = train(config, GENAIR_RECOMMENDERS__TRAINING__MAX_EPOCHS="1")
    assert summary["skipped"] is False
    assert summary["epochs"] == 1
    folders = list(store.recommender_dir("sasrec-id-bce-s3").glob("checkpoints-*"))
    assert [f.name for f in folders] == [f"checkpoints-{summary['run_key']}"]  # the stale one went


def test_the_flow_trains_every_run_workers_at_a_time_and_reports(config, monkeypatch):
    """Two runs train side by side: each run waits until two have been in at once (so a pool
    of one would fail here). No third: the runs are tasks of a thread pool whose size is
    checked, which is what bounds them; `most` would also catch a third that got in."""
    real_train, real_runner = tasks.recommenders.train_run, flows.training.ThreadPoolTaskRunner
    changed, active, most, pools = threading.Condition(), [0], [0], []

    def counting(*args, **kwargs):
        with changed:
            active[0] += 1
            most[0] = max(most[0], active[0])
            changed.notify_all()
            two_in = changed.wait_for(lambda: most[0] >= 2, timeout=600)
        try:
            if not two_in:
                raise AssertionError("the pool never ran two runs at once")
            return real_train(*args, **kwargs)
        finally:
            with changed:
                active[0] -= 1

    def runner(max_workers: int):
        pools.append(max_workers)
        return real_runner(max_workers=max_workers)

    monkeypatch.setattr(tasks.recommenders, "train_run", counting)
    monkeypatch.setattr(flows.training, "ThreadPoolTaskRunner", runner)
    threads = torch.get_num_threads()
    summary = genair_full(config_path=str(config), start="recommenders", force=True)
    assert torch.get_num_threads() == threads  # each run's share of the cores, then restored
    runs = summary["recommenders"]
    assert (runs["runs"], runs["trained"], runs["workers"]) == (4, 4, 2)
    assert pools == [2]
    assert most[0] == 2
    assert set(runs["test_ndcg@10 (full ranking)"]) == {
        f"{b}-id-bce-s{s}" for b in ("sasrec", "gru4rec") for s in (3, 4)
    }
    results = summary["results"]
    assert (results["runs"], results["finished"]) == (4, 4)
    assert results["report"] == str(Store(config.parent / "data").report_path("recommenders"))
    assert "| sasrec | id | 2 |" in Path(results["report"]).read_text()
    again = genair_full(config_path=str(config), start="recommenders")
    assert again["recommenders"]["trained"] == 0
