"""Requests may name the served model by its id or by any OpenAI-style alias."""

from __future__ import annotations

import time

import pytest

from chatapi.models.registry import DEFAULT_ALIASES, ModelNotFoundError, ModelRegistry

MODEL_ID = "qwen2.5-coder-0.5b-instruct"


@pytest.fixture
def registry() -> ModelRegistry:
    return ModelRegistry(MODEL_ID, DEFAULT_ALIASES, created=1_700_000_000)


def test_resolves_id_and_every_alias(registry: ModelRegistry) -> None:
    assert registry.resolve(MODEL_ID) == MODEL_ID
    for alias in DEFAULT_ALIASES:
        assert registry.resolve(alias) == MODEL_ID


@pytest.mark.parametrize("name", ["gpt-5", "", "GPT-4", "gpt-4 "])
def test_unknown_name_raises_with_the_name(registry: ModelRegistry, name: str) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        registry.resolve(name)
    assert info.value.model == name
    assert isinstance(info.value, LookupError)


def test_error_message_bounds_a_huge_name(registry: ModelRegistry) -> None:
    name = "x" * 100_000
    with pytest.raises(ModelNotFoundError) as info:
        registry.resolve(name)
    assert info.value.model == name
    assert len(str(info.value)) < 300


def test_list_models_has_openai_shape(registry: ModelRegistry) -> None:
    models = registry.list_models()

    assert [m["id"] for m in models] == [MODEL_ID, *DEFAULT_ALIASES]
    for model in models:
        assert model == {
            "id": model["id"],
            "object": "model",
            "created": 1_700_000_000,
            "owned_by": "chatapi",
        }


def test_get_model_returns_the_name_asked_for(registry: ModelRegistry) -> None:
    assert registry.get_model("gpt-4")["id"] == "gpt-4"
    assert registry.get_model(MODEL_ID)["id"] == MODEL_ID
    with pytest.raises(ModelNotFoundError) as info:
        registry.get_model("davinci")
    assert info.value.model == "davinci"


def test_duplicate_aliases_and_the_id_itself_are_listed_once() -> None:
    registry = ModelRegistry("m", ["a", "m", "a", "b"], created=0, owned_by="me")

    assert [m["id"] for m in registry.list_models()] == ["m", "a", "b"]
    assert registry.list_models()[0]["owned_by"] == "me"


def test_no_aliases_serves_only_the_id() -> None:
    registry = ModelRegistry("m", created=0)

    assert registry.resolve("m") == "m"
    with pytest.raises(ModelNotFoundError):
        registry.resolve("gpt-4")


def test_list_returns_copies(registry: ModelRegistry) -> None:
    registry.list_models()[0]["id"] = "tampered"
    assert registry.list_models()[0]["id"] == MODEL_ID


def test_created_defaults_to_now() -> None:
    before = int(time.time())
    assert ModelRegistry("m").created >= before


@pytest.mark.parametrize("model_id, aliases", [("", ()), ("m", ("",))])
def test_empty_names_are_rejected(model_id: str, aliases: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        ModelRegistry(model_id, aliases)
