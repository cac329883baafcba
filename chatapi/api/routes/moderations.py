"""POST /v1/moderations: OpenAI's moderation endpoint, answered by the server's content policy
(the same one that filters chat prompts and output), so clients can check text themselves."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from chatapi.api.errors import invalid_request
from chatapi.api.protocol import parse_request
from chatapi.api.state import new_id
from chatapi.moderation import CATEGORIES, Policy

router = APIRouter()
NO_POLICY = "chatapi-no-policy"  # the model name answered when moderation is off


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextInput(_Strict):
    type: Literal["text"]
    text: str


class ImageInput(_Strict):
    type: Literal["image_url"]
    image_url: dict[str, Any]


class ModerationRequest(_Strict):
    input: str | list[str] | list[TextInput | ImageInput]
    model: str | None = Field(default=None, max_length=256)


def _inputs(req: ModerationRequest, max_items: int, max_chars: int) -> list[list[str]]:
    """The texts of each result: one per string, or one for all the parts of a multi-modal
    input (as OpenAI does)."""
    if isinstance(req.input, str):
        groups = [[req.input]]
    elif req.input and not isinstance(req.input[0], str):
        parts = req.input
        for i, part in enumerate(parts):
            if isinstance(part, ImageInput):
                raise invalid_request("Images are not supported by this server's content "
                                      "policy; send text.", param=f"input[{i}]")
        groups = [[part.text for part in parts]]
    else:
        groups = [[text] for text in req.input]
    if not 1 <= len(groups) <= max_items:
        raise invalid_request(f"Invalid value for 'input': give 1 to {max_items} texts, got "
                              f"{len(groups)}.", param="input")
    for i, group in enumerate(groups):
        if sum(len(text) for text in group) > max_chars:
            raise invalid_request(f"Invalid value for 'input': at most {max_chars} characters "
                                  "per input.", param="input" if len(groups) == 1
                                  else f"input[{i}]")
    return groups


def moderation_result(policy: Policy | None, texts: list[str]) -> dict[str, Any]:
    """One result in OpenAI's shape; a category is flagged when its terms occur, whatever
    the actions the policy gives it for chat."""
    found = set(policy.check_input(texts).found) if policy is not None else set()
    return {"flagged": bool(found),
            "categories": {c: c in found for c in CATEGORIES},
            "category_scores": {c: 1.0 if c in found else 0.0 for c in CATEGORIES},
            "category_applied_input_types": {c: ["text"] for c in CATEGORIES}}


@router.post("/v1/moderations")
async def create_moderation(request: Request) -> dict[str, Any]:
    state = request.app.state.chatapi
    req = parse_request(ModerationRequest, await request.body())
    limits = state.settings
    groups = _inputs(req, limits.max_messages, limits.max_message_chars)
    policy: Policy | None = state.moderation
    size = sum(len(text) for group in groups for text in group)

    def classify() -> list[dict[str, Any]]:
        return [moderation_result(policy, group) for group in groups]

    results = await asyncio.to_thread(classify) if size > 65536 else classify()
    return {"id": new_id("modr-"), "model": policy.name if policy else NO_POLICY,
            "results": results}
