"""The archetype prompt of GenAIR (Li et al., WWW 2026), stage 1 of docs/method.md.

    Based on the following attributes, identify the types of users this item would appeal to: \\n
    title is Toy Story (1995); categories is Animation, Children's, Comedy; release year is 1995
    \\nWhich potential users align best with this movie?

(one line in reality: the instruction ends in "\\n ", the question starts with "\\n".)

Fields of a catalog row (genair_core.tables.ITEMS), in this order, under these names:

    title, brand, categories, release year, price, description, features, then every entry of
    `attributes` in sorted key order under its own key.

A value is written as text (lists joined with ", ", price with two decimals), its line breaks
and runs of whitespace become one space and ";" becomes "." (as the reference code does, so
the `; ` separator stays unambiguous), and it is cut to 100 characters. None, empty strings,
empty lists and NaN are skipped. Attributes that are image URLs, also_buy / also_view /
similar_item lists or `fit` are dropped, as in the paper.

Deviations from the reference code: it writes the metadata keys in the order of the source JSON
and under the source's names (`category`, `feature`); here the order and names are fixed so that
every source gives the same prompt for the same metadata. It wraps the prompt in a hard-coded
Llama-2 `[INST]` format; here the model's own chat template renders it (`render_chat`), with no
system message of ours (a template that adds a default system message, like SmolLM2's, does so).

`PROMPT_VERSION` names the wording and rendering. It is derived from the constants below plus
`_RENDER_REVISION`, which must be bumped by hand whenever the code of `build_prompt` or
`render_chat` changes what it produces.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

INSTRUCTION = (
    "Based on the following attributes, identify the types of users this item would appeal to: \n "
)
QUESTION = "\nWhich potential users align best with this {item_type}?"
SEPARATOR = "; "
KEY_VALUE = "{key} is {value}"
LIST_JOINER = ", "
MAX_VALUE_CHARS = 100

# (column of genair_core.tables.ITEMS, name written in the prompt), in prompt order.
PROMPT_FIELDS: tuple[tuple[str, str], ...] = (
    ("title", "title"),
    ("brand", "brand"),
    ("categories", "categories"),
    ("release_year", "release year"),
    ("price", "price"),
    ("description", "description"),
    ("features", "features"),
)
ATTRIBUTES_COLUMN = "attributes"
# Attribute keys dropped, compared after lower-casing and removing everything but letters/digits.
DROPPED_KEYS = frozenset({"alsobuy", "alsoview", "alsobought", "alsoviewed", "similaritem", "fit"})
DROPPED_KEY_PREFIXES = ("image",)  # imageURL, imageURLHighRes, images

_RENDER_REVISION = 1  # bump when build_prompt / render_chat change their output


class ChatTokenizer(Protocol):
    chat_template: str | None

    def apply_chat_template(self, conversation: list[dict[str, str]], **kwargs: Any) -> Any: ...


def prompt_version() -> str:
    """A short name of the current wording and rendering, e.g. `p1-3f9c2a1b`."""
    spec = {
        "instruction": INSTRUCTION,
        "question": QUESTION,
        "separator": SEPARATOR,
        "key_value": KEY_VALUE,
        "list_joiner": LIST_JOINER,
        "max_value_chars": MAX_VALUE_CHARS,
        "item_fields": PROMPT_FIELDS,
        "attributes": ATTRIBUTES_COLUMN,
        "dropped_keys": sorted(DROPPED_KEYS),
        "dropped_prefixes": DROPPED_KEY_PREFIXES,
        "render_revision": _RENDER_REVISION,
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
    return f"p{_RENDER_REVISION}-{digest[:8]}"


PROMPT_VERSION = prompt_version()


def build_prompt(item: Mapping[str, Any], item_type: str) -> str:
    """The paper's archetype prompt for one catalog row (a dict with the ITEMS columns).

    Missing columns count as empty. `item_type` names the item in the question ("movie",
    "beauty product", "fashion item").
    """
    if not item_type.strip():
        raise ValueError("item_type must be a non-empty noun such as 'movie'")
    pairs = [(name, item.get(column)) for column, name in PROMPT_FIELDS]
    pairs += sorted(_attribute_pairs(item.get(ATTRIBUTES_COLUMN)), key=lambda kv: kv[0])
    parts = []
    for key, raw in pairs:
        if _is_dropped(key):
            continue
        value = _format_value(raw)
        if value:
            parts.append(KEY_VALUE.format(key=key, value=value))
    return INSTRUCTION + SEPARATOR.join(parts) + QUESTION.format(item_type=item_type)


def render_chat(tokenizer: ChatTokenizer, prompt: str) -> str:
    """`prompt` as the model's own chat template writes a user turn, ready for generation."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "the model's tokenizer has no chat template; GenAIR needs an instruction-tuned "
            "(chat) model"
        )
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    if not isinstance(rendered, str):
        raise TypeError(f"apply_chat_template returned {type(rendered).__name__}, not str")
    return rendered


def _attribute_pairs(attributes: object) -> Iterable[tuple[str, object]]:
    # pyarrow gives a map column as a list of (key, value) tuples; hand-made rows may use a dict.
    if attributes is None:
        return []
    if isinstance(attributes, Mapping):
        return [(str(k), v) for k, v in attributes.items()]
    return [(str(k), v) for k, v in attributes]


def _is_dropped(key: str) -> bool:
    norm = re.sub(r"[^a-z0-9]", "", key.lower())
    return norm in DROPPED_KEYS or norm.startswith(DROPPED_KEY_PREFIXES)


def _format_value(raw: object) -> str:
    if raw is None:
        return ""
    if isinstance(raw, float):
        if math.isnan(raw):
            return ""
        text = f"{raw:.2f}"
    elif isinstance(raw, str):
        text = raw
    elif isinstance(raw, Iterable):
        text = LIST_JOINER.join(c for c in (_clean(str(v)) for v in raw if v is not None) if c)
    else:
        text = str(raw)
    return _clean(text)[:MAX_VALUE_CHARS].rstrip()


def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).replace(";", ".").strip()
