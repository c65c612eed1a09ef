"""A hand-made `files` dataset small enough to check every table by eye."""

import textwrap
from pathlib import Path

CATALOG = """\
item_id,title,genre
A,Alpha,drama
B,Beta,comedy
C,Gamma,drama
D,Delta,horror
"""

# u1..u3 see four items each (two in training, then validation, then test); u4 has one known
# interaction, so k=2 removes that user; Z is not in the catalog.
EVENTS = """\
user_id,item_id,timestamp
u1,A,100
u1,B,200
u1,C,300
u1,D,400
u2,B,100
u2,A,150
u2,D,300
u2,C,400
u3,C,50
u3,A,60
u3,B,70
u3,D,80
u4,D,10
u4,Z,20
"""


def files_config(k_core: int, extra: str = "") -> str:
    """A genair.toml for catalog.csv and events.csv beside it, storage under data/, no retry
    delay; `extra` holds further sections."""
    return textwrap.dedent(
        f"""\
            [storage]
            root = "data"
            cache_dir = "cache"
            [dataset]
            name = "files"
            [dataset.files]
            catalog = "catalog.csv"
            interactions = "events.csv"
            [preprocess]
            k_core = {k_core}
            [prefect]
            retry_delay_s = 0
            """
    ) + textwrap.dedent(extra)


def write_small_dataset(folder: Path) -> Path:
    """Write catalog.csv, events.csv and a genair.toml (k_core=2) into `folder`; return the toml."""
    (folder / "catalog.csv").write_text(CATALOG)
    (folder / "events.csv").write_text(EVENTS)
    path = folder / "genair.toml"
    path.write_text(files_config(k_core=2))
    return path
