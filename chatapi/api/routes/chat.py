"""POST /v1/chat/completions."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from chatapi.api.auth import admit
from chatapi.api.disconnect import json_unless_disconnected
from chatapi.api.protocol import ChatCompletionRequest, parse_request
from chatapi.api.serving_chat import ChatCompletion, prepare_chat
from chatapi.api.sse import sse_response

router = APIRouter()


@router.post("/v1/chat/completions")
async def create_chat_completion(request: Request) -> Response:
    state = request.app.state.chatapi
    req = parse_request(ChatCompletionRequest, await request.body())
    tokens, max_tokens = await prepare_chat(state, req)
    n = req.n or 1
    await admit(request, req.model, len(tokens) + n * max_tokens)  # key: model, limits
    stream = state.engine.generate(tokens, state.sampling_params(req, max_tokens, n),
                                   request.state.request_id)
    tracker = state.track(request.scope["state"], "chat.completions", req.model)
    completion = ChatCompletion(state, req, stream, tracker)
    if req.stream:
        return sse_response(completion.chunks(), completion.close, completion.headers)
    response = await json_unless_disconnected(request, completion.body(), completion.close)
    response.headers.update(completion.headers)
    return response
