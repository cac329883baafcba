// Talking to chatapi: the model list and streamed chat completions (OpenAI's wire shapes).

/** An API failure with a message a person can read. */
export class APIError extends Error {
  constructor(message, { status = 0, type = "", code = "", param = "" } = {}) {
    super(message);
    this.name = "APIError";
    this.status = status;
    this.type = type;
    this.code = code;
    this.param = param;
  }

  /** "401 invalid_request_error (invalid_api_key)" style summary, empty parts left out. */
  get label() {
    const kind = [this.type, this.code && `(${this.code})`].filter(Boolean).join(" ");
    return [this.status || "", kind].filter(Boolean).join(" ");
  }
}

function headers(apiKey) {
  const out = { "Content-Type": "application/json" };
  if (apiKey && /[^\x20-\x7e]/.test(apiKey)) {
    throw new APIError("The API key holds characters that cannot be sent in an HTTP header.",
      { type: "invalid_api_key" });
  }
  if (apiKey) out.Authorization = `Bearer ${apiKey}`;
  return out;
}

/** Turn a non-2xx response into an APIError, reading OpenAI's {"error": {...}} when present. */
async function errorFrom(response) {
  let text = "";
  try {
    text = await response.text();
  } catch {
    // the body could not be read; the status line still says something
  }
  let err = null;
  try {
    err = JSON.parse(text).error;
  } catch {
    // not JSON: use the raw text below
  }
  if (err && typeof err === "object") {
    return new APIError(String(err.message || "Unknown error"), {
      status: response.status, type: err.type || "", code: err.code || "", param: err.param || "",
    });
  }
  const message = text.trim().slice(0, 500) || response.statusText || "Request failed";
  return new APIError(message, { status: response.status });
}

function networkError(err) {
  return new APIError(`Could not reach the server: ${err.message || err}`, { type: "network_error" });
}

export async function listModels(apiKey) {
  const init = { headers: headers(apiKey) };
  let response;
  try {
    response = await fetch("/v1/models", init);
  } catch (err) {
    throw networkError(err);
  }
  if (!response.ok) throw await errorFrom(response);
  const body = await response.json();
  return (body.data || []).map((m) => m.id);
}

/** Yield the JSON payload of each `data:` event of an SSE body; stops at [DONE]. */
async function* sseEvents(body) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      let cut;
      while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
        const data = block.split(/\r?\n/).filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, "")).join("\n");
        if (!data) continue;
        if (data === "[DONE]") return;
        yield JSON.parse(data);
      }
      if (done) return;
    }
  } finally {
    reader.releaseLock();
  }
}

/** Merge streamed `delta.tool_calls` fragments into complete tool calls (by index). */
export function mergeToolCallDeltas(calls, deltas) {
  for (const d of deltas) {
    const index = d.index ?? calls.length;
    const call = calls[index] ||= { id: "", type: "function", function: { name: "", arguments: "" } };
    if (d.id) call.id = d.id;
    if (d.type) call.type = d.type;
    if (d.function?.name) call.function.name += d.function.name;
    if (d.function?.arguments) call.function.arguments += d.function.arguments;
  }
  return calls;
}

/**
 * POST /v1/chat/completions with stream: true.
 * `on.delta(text)` gets content as it arrives; `on.toolCalls(calls)` the merged calls so far.
 * Resolves to {content, toolCalls, finishReason, usage, ttftMs, elapsedMs, aborted}.
 * Throws APIError for HTTP errors and for error events sent after streaming began.
 */
export async function streamChat(request, { apiKey, signal, on = {} }) {
  const started = performance.now();
  const result = {
    content: "", toolCalls: [], finishReason: null, usage: null,
    ttftMs: null, elapsedMs: 0, aborted: false,
  };
  const init = { method: "POST", headers: headers(apiKey), body: JSON.stringify(request), signal };
  let response;
  try {
    response = await fetch("/v1/chat/completions", init);
  } catch (err) {
    if (err.name === "AbortError") return { ...result, aborted: true };
    throw networkError(err);
  }
  if (!response.ok) throw await errorFrom(response);

  try {
    for await (const chunk of sseEvents(response.body)) {
      if (chunk.error) {
        const e = chunk.error;
        throw new APIError(String(e.message || "Error during streaming"), {
          type: e.type || "", code: e.code || "", param: e.param || "",
        });
      }
      if (chunk.usage) result.usage = chunk.usage;
      const choice = (chunk.choices || [])[0];
      if (!choice) continue;
      const delta = choice.delta || {};
      if (delta.content) {
        result.ttftMs ??= performance.now() - started;
        result.content += delta.content;
        on.delta?.(delta.content, result);
      }
      if (delta.tool_calls?.length) {
        result.ttftMs ??= performance.now() - started;
        mergeToolCallDeltas(result.toolCalls, delta.tool_calls);
        on.toolCalls?.(result.toolCalls, result);
      }
      if (choice.finish_reason) result.finishReason = choice.finish_reason;
    }
  } catch (err) {
    if (err.name === "AbortError" || signal?.aborted) {
      result.aborted = true;
    } else if (err instanceof APIError) {
      throw err;
    } else {
      throw new APIError(`The stream broke off: ${err.message || err}`, { type: "network_error" });
    }
  }
  result.elapsedMs = performance.now() - started;
  result.toolCalls = result.toolCalls.filter(Boolean);
  return result;
}
