"""The archetype prompt: exact strings, chat rendering, and the version that names them."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from genair_core.llm import prompts
from genair_core.llm.prompts import PROMPT_VERSION, build_prompt, prompt_version, render_chat

INSTRUCTION = (
    "Based on the following attributes, identify the types of users this item would appeal to: \n "
)

# SmolLM2-135M-Instruct's own template (as converted from the GGUF): a default system turn.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def movielens_row() -> dict:
    return {
        "item_id": "1",
        "content_hash": "x",
        "title": "Toy Story (1995)",
        "brand": None,
        "categories": ["Animation", "Children's", "Comedy"],
        "description": None,
        "features": None,
        "price": None,
        "release_year": 1995,
        "attributes": None,
        "source": "ml-100k",
        "line": 2,
    }


def amazon_row() -> dict:
    long_description = (
        "This gentle cleanser removes makeup; it is suitable for\nsensitive skin and leaves "
        "no residue at all, even after a long day outdoors in the sun."
    )
    return {
        "item_id": "B00004U9V2",
        "title": "Crabtree & Evelyn Hand Soap",
        "brand": "Crabtree & Evelyn",
        "categories": ["Beauty", "Skin Care", "Hands & Nails"],
        "description": long_description,
        "features": ["Fragrance: Gardeners", "", "Made in USA"],
        "price": 15.5,
        "release_year": None,
        # A map column read from Parquet: a list of (key, value) pairs.
        "attributes": [
            ("main_cat", "Luxury Beauty"),
            ("imageURLHighRes", "https://images.example.com/a.jpg"),
            ("also_buy", "B0001, B0002"),
            ("rank", "4,324 in Beauty & Personal Care"),
            ("fit", ""),
            ("date", "   "),
        ],
    }


def test_movielens_prompt_exact() -> None:
    assert build_prompt(movielens_row(), "movie") == (
        INSTRUCTION + "title is Toy Story (1995); categories is Animation, Children's, Comedy; "
        "release year is 1995\nWhich potential users align best with this movie?"
    )


def test_amazon_prompt_exact() -> None:
    # description: newline → space, ";" → ".", then cut to 100 characters;
    # image URL and also_buy dropped; empty feature and blank attribute skipped;
    # attributes in sorted key order after the typed columns.
    description = (
        "This gentle cleanser removes makeup. it is suitable for sensitive skin and leaves no "
        "residue at all,"
    )
    assert len(description) == 100
    assert build_prompt(amazon_row(), "beauty product") == (
        INSTRUCTION + "title is Crabtree & Evelyn Hand Soap; brand is Crabtree & Evelyn; "
        "categories is Beauty, Skin Care, Hands & Nails; price is 15.50; "
        f"description is {description}; features is Fragrance: Gardeners, Made in USA; "
        "main_cat is Luxury Beauty; rank is 4,324 in Beauty & Personal Care"
        "\nWhich potential users align best with this beauty product?"
    )


def test_attributes_as_dict_equal_pairs() -> None:
    as_pairs = amazon_row()
    as_dict = {**as_pairs, "attributes": dict(as_pairs["attributes"])}
    assert build_prompt(as_dict, "item") == build_prompt(as_pairs, "item")


def test_long_list_is_cut_after_joining() -> None:
    row = {"title": "t", "categories": [f"genre{i:02d}" for i in range(30)]}
    prompt = build_prompt(row, "movie")
    value = prompt.split("categories is ")[1].split("\nWhich")[0]
    assert len(value) == 100
    assert value.startswith("genre00, genre01, ")


def test_nan_price_and_missing_columns_are_skipped() -> None:
    assert build_prompt({"title": "A", "price": float("nan")}, "item") == (
        INSTRUCTION + "title is A\nWhich potential users align best with this item?"
    )


def test_empty_item_type_rejected() -> None:
    with pytest.raises(ValueError, match="item_type"):
        build_prompt(movielens_row(), " ")


def chat_tokenizer(template: str | None) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>"))
    )
    tokenizer.chat_template = template
    return tokenizer


def test_chat_rendering_wraps_the_prompt() -> None:
    prompt = build_prompt(movielens_row(), "movie")
    rendered = render_chat(chat_tokenizer(CHATML), prompt)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        f"Face<|im_end|>\n<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    )


def test_model_without_chat_template_is_refused() -> None:
    with pytest.raises(ValueError, match="chat template"):
        render_chat(chat_tokenizer(None), "hello")


def test_prompt_version_is_stable_and_tracks_wording(monkeypatch: pytest.MonkeyPatch) -> None:
    assert prompt_version() == PROMPT_VERSION
    assert PROMPT_VERSION == "p1-852a5f9f"  # the ml-100k archetypes' version: keep it
    monkeypatch.setattr(prompts, "INSTRUCTION", INSTRUCTION.replace("types", "kinds"))
    changed = prompt_version()
    assert changed != PROMPT_VERSION
    monkeypatch.setattr(prompts, "INSTRUCTION", INSTRUCTION)
    monkeypatch.setattr(prompts, "MAX_VALUE_CHARS", 200)
    assert prompt_version() not in (PROMPT_VERSION, changed)
