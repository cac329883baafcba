"""POST /v1/completions (legacy)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from chatapi.api.auth import admit
from chatapi.api.disconnect import json_unless_disconnected
from chatapi.api.protocol import CompletionRequest, parse_request
from chatapi.api.serving_completions import TextCompletion, prepare_completion
from chatapi.api.sse import sse_response

router = APIRouter()


@router.post("/v1/completions")
async def create_completion(request: Request) -> Response:
    state = request.app.state.chatapi
    req = parse_request(CompletionRequest, await request.body())
    token_lists, texts, max_tokens = await prepare_completion(state, req)
    n = req.n or 1
    generated = max(req.best_of or n, n)  # best_of sequences are generated (and billed)
    await admit(request, req.model,  # key: model, limits
                sum(map(len, token_lists)) + len(token_lists) * generated * max_tokens)
    params = state.sampling_params(req, max_tokens, n)
    streams = []
    try:
        for tokens in token_lists:
            streams.append(state.engine.generate(tokens, params, request.state.request_id))
    except BaseException:
        for stream in streams:
            stream.close()
        raise
    tracker = state.track(request.scope["state"], "completions", req.model)
    completion = TextCompletion(state, req, streams, texts, tracker)
    if req.stream:
        return sse_response(completion.chunks(), completion.close)
    return await json_unless_disconnected(request, completion.body(), completion.close)
