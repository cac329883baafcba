"""GET /v1/models lists the served model under the names clients use."""

from __future__ import annotations

import httpx
from openai import OpenAI

from tests.openapi import validate

from .helpers import assert_error


def test_list_models(client: httpx.Client) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    validate("ListModelsResponse", body)
    ids = [model["id"] for model in body["data"]]
    assert {"gpt-3.5-turbo", "gpt-4o"} <= set(ids)
    assert len(ids) == len(set(ids))


def test_retrieve_model_by_alias(client: httpx.Client, base_url: str) -> None:
    response = client.get("/v1/models/gpt-4o")
    assert response.status_code == 200
    body = response.json()
    validate("Model", body)
    assert body["id"] == "gpt-4o" and body["object"] == "model"

    sdk = OpenAI(base_url=f"{base_url}/v1", api_key="sk-none", max_retries=0)
    assert sdk.models.retrieve("gpt-4o").id == "gpt-4o"


def test_unknown_model_is_a_404(client: httpx.Client) -> None:
    assert_error(client.get("/v1/models/nope"), 404, code="model_not_found")
