// The Playground: conversation state, sending and streaming, and the page's controls.

import { APIError, listModels, streamChat } from "./api.js";
import { wireCodeView } from "./codeview.js";
import { ParamError, readParams, restoreParams, saveParams, wireParams } from "./params.js";
import { fillBody, renderMessages } from "./view.js";

const KEY_STORAGE = "chatapi.playground.apiKey";
const $ = (id) => document.getElementById(id);

const state = {
  messages: [], // {role, content, tool_calls?, tool_call_id?, name?, meta?, streaming?}
  editing: null, // index of the message being edited
  error: null, // the last APIError / ParamError, shown under the conversation
  controller: null, // AbortController of the reply being streamed
  toolDrafts: new Map(), // tool_call_id -> text typed into its result box
  savedModel: "",
};

const busy = () => state.controller !== null;

// ---------------------------------------------------------------- requests

function wireMessage(m) {
  if (m.role === "tool") return { role: "tool", tool_call_id: m.tool_call_id, content: m.content };
  if (m.role === "assistant" && m.tool_calls?.length) {
    return { role: "assistant", content: m.content || null,
      tool_calls: m.tool_calls.map(({ id, type, function: f }) =>
        ({ id, type: type || "function", function: { name: f.name, arguments: f.arguments } })) };
  }
  return { role: m.role, content: m.content };
}

/** The request the page would send now; `withDraft` adds the unsent text of the message box. */
function buildRequest({ withDraft = false } = {}) {
  const messages = [];
  const system = $("system").value;
  if (system.trim()) messages.push({ role: "system", content: system });
  messages.push(...state.messages.filter((m) => !m.streaming).map(wireMessage));
  const draft = $("input").value;
  if (withDraft && draft.trim()) messages.push({ role: $("input-role").value, content: draft });
  return {
    model: $("model").value || state.savedModel || "gpt-3.5-turbo",
    messages,
    ...readParams(),
    stream: true,
    stream_options: { include_usage: true },
  };
}

function hintFor(err) {
  if (err instanceof ParamError) return "Fix the field in the Parameters panel and send again.";
  if (err.status === 401) return "Enter a valid key in the API key field at the top of the page.";
  if (err.type === "network_error") return "Is the chatapi server still running?";
  if (err.status === 429) return "The server is busy; try again in a moment.";
  return "";
}

function showError(err) {
  if (!(err instanceof APIError) && !(err instanceof ParamError)) {
    err = new APIError(String(err?.message || err));
  }
  err.hint = hintFor(err);
  state.error = err;
}

async function generate() {
  let request;
  try {
    request = buildRequest();
  } catch (err) {
    showError(err);
    render();
    if (err.field) $(err.field).focus();
    return;
  }
  saveParams();
  state.error = null;
  const reply = { role: "assistant", content: "", streaming: true };
  state.messages.push(reply);
  state.controller = new AbortController();
  setStatus("Generating…");
  render();

  const body = () =>
    document.querySelector(`#messages li[data-index="${state.messages.indexOf(reply)}"]`);
  let frame = 0;
  const redraw = () => {
    frame = 0;
    const item = body();
    if (!item) return;
    const stick = nearBottom();
    const target = item.querySelector(".msg-body");
    if (target) fillBody(target, reply);
    if (reply.tool_calls) render();
    if (stick) scrollToEnd();
  };
  const schedule = () => {
    frame ||= requestAnimationFrame(redraw);
  };

  try {
    const result = await streamChat(request, {
      apiKey: apiKey(),
      signal: state.controller.signal,
      on: {
        delta: (_text, partial) => {
          reply.content = partial.content;
          schedule();
        },
        toolCalls: (calls) => {
          reply.tool_calls = calls.filter(Boolean).map((c) => structuredClone(c));
          schedule();
        },
      },
    });
    reply.content = result.content;
    if (result.toolCalls.length) reply.tool_calls = result.toolCalls;
    const { usage, ttftMs, elapsedMs, aborted } = result;
    reply.meta = { usage, ttftMs, elapsedMs, finishReason: aborted ? "stopped" : result.finishReason };
    if (aborted && !reply.content && !reply.tool_calls) {
      state.messages.splice(state.messages.indexOf(reply), 1); // stopped before any token
    }
    setStatus(aborted ? "Stopped." : "Reply finished.");
  } catch (err) {
    showError(err);
    setStatus("The request failed.");
    if (!reply.content && !reply.tool_calls?.length) {
      state.messages.splice(state.messages.indexOf(reply), 1);
    } else {
      reply.meta = { finishReason: "error", elapsedMs: 0 };
    }
  } finally {
    if (frame) cancelAnimationFrame(frame);
    delete reply.streaming;
    state.controller = null;
    render();
    scrollToEnd();
  }
}

// ---------------------------------------------------------------- actions

async function send() {
  if (busy()) return;
  const text = $("input").value;
  const role = $("input-role").value;
  if (text.trim()) {
    state.messages.push({ role, content: text });
    $("input").value = "";
    if (role === "assistant") {
      render();
      scrollToEnd();
      return;
    }
  }
  const last = state.messages[state.messages.length - 1];
  if (!last || last.role === "assistant") {
    setStatus(last ? "Type a message first, or use Regenerate." : "Type a message first.");
    return;
  }
  if (pendingToolCalls().length) {
    setStatus("Answer the tool calls first: type each result in its card.");
    return;
  }
  await generate();
}

function stop() {
  state.controller?.abort();
}

async function regenerate() {
  if (busy()) return;
  // drop everything after the last user or tool message, then ask again
  let end = state.messages.length;
  while (end > 0 && state.messages[end - 1].role === "assistant") end -= 1;
  if (end === 0) {
    setStatus("Nothing to regenerate yet.");
    return;
  }
  state.messages.length = end;
  await generate();
}

function clearConversation() {
  if (busy()) return;
  state.messages = [];
  state.editing = null;
  state.error = null;
  state.toolDrafts.clear();
  setStatus("Conversation cleared.");
  render();
  $("input").focus();
}

function pendingToolCalls() {
  const answered = new Set(state.messages.filter((m) => m.role === "tool").map((m) => m.tool_call_id));
  return state.messages.flatMap((m) => m.tool_calls || []).filter((c) => !answered.has(c.id));
}

async function submitToolResult(index, call, text) {
  if (busy()) return;
  // results go after the calling message and the results already given for it
  let at = index + 1;
  while (at < state.messages.length && state.messages[at].role === "tool") at += 1;
  state.messages.splice(at, 0, { role: "tool", tool_call_id: call.id, name: call.function?.name,
    content: text });
  state.toolDrafts.delete(call.id);
  const lastIsTool = state.messages[state.messages.length - 1].role === "tool";
  if (lastIsTool && pendingToolCalls().length === 0) {
    await generate();
  } else {
    render();
    document.querySelector(".tool-result-form textarea")?.focus();
  }
}

function removeMessage(index) {
  if (busy()) return;
  const [gone] = state.messages.splice(index, 1);
  const ids = new Set((gone.tool_calls || []).map((c) => c.id));
  state.messages = state.messages.filter((m) => !(m.role === "tool" && ids.has(m.tool_call_id)));
  state.editing = null;
  render();
  setStatus(`Deleted the ${gone.role} message.`);
}

async function saveEdit(index, text, resend) {
  state.messages[index].content = text;
  state.editing = null;
  if (resend) {
    state.messages.length = index + 1;
    await generate();
    return;
  }
  render();
  document.querySelector(`#messages li[data-index="${index}"] .msg-actions button`)?.focus();
}

// ---------------------------------------------------------------- drawing

function render() {
  const ctx = {
    busy: busy(),
    editing: state.editing,
    error: state.error,
    toolResult: (id) => state.messages.some((m) => m.role === "tool" && m.tool_call_id === id),
    draft: (id) => state.toolDrafts.get(id) || "",
    setDraft: (id, text) => state.toolDrafts.set(id, text),
    submitToolResult,
    startEdit: (i) => {
      state.editing = i;
      render();
      $(`edit-${i}`)?.focus();
    },
    cancelEdit: () => {
      const i = state.editing;
      state.editing = null;
      render();
      document.querySelector(`#messages li[data-index="${i}"] .msg-actions button`)?.focus();
    },
    saveEdit,
    remove: removeMessage,
  };
  renderMessages($("messages"), state.messages, ctx);
  $("empty-hint").hidden = state.messages.length > 0 || state.error !== null;
  document.body.dataset.state = busy() ? "streaming" : "idle";
  $("send").hidden = busy();
  $("stop").hidden = !busy();
  $("regenerate").disabled = busy() || !state.messages.some((m) => m.role !== "assistant");
  $("clear").disabled = busy() || (state.messages.length === 0 && !state.error);
}

function nearBottom() {
  const s = $("scroller");
  const inner = s.scrollHeight - s.scrollTop - s.clientHeight;
  const page = document.documentElement.scrollHeight - window.scrollY - window.innerHeight;
  return inner < 80 || page < 120;
}

function scrollToEnd() {
  const s = $("scroller");
  s.scrollTop = s.scrollHeight;
}

function setStatus(text) {
  $("status").textContent = text;
}

// ---------------------------------------------------------------- models and key

function apiKey() {
  return $("api-key").value.trim();
}

async function loadModels() {
  const select = $("model");
  const error = $("model-error");
  const wanted = select.value || state.savedModel;
  let ids;
  try {
    ids = await listModels(apiKey());
    error.hidden = true;
  } catch (err) {
    error.textContent = `Could not load the models: ${err.message}`;
    error.hidden = false;
    ids = wanted ? [wanted] : [];
  }
  select.replaceChildren(...ids.map((id) => new Option(id, id)));
  if (ids.includes(wanted)) select.value = wanted;
}

// ---------------------------------------------------------------- wiring

function wire() {
  $("composer").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  $("input").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    } else if (e.key === "Escape" && busy()) {
      stop();
    }
  });
  $("stop").addEventListener("click", () => {
    stop();
    $("input").focus();
  });
  $("regenerate").addEventListener("click", regenerate);
  $("clear").addEventListener("click", clearConversation);

  const key = $("api-key");
  try {
    key.value = localStorage.getItem(KEY_STORAGE) || "";
  } catch {
    // storage disabled: the key lives for this visit only
  }
  $("key-form").addEventListener("submit", (e) => e.preventDefault()); // Enter fires "change"
  key.addEventListener("change", () => {
    try {
      localStorage.setItem(KEY_STORAGE, key.value.trim());
    } catch {
      // see above
    }
    loadModels();
  });

  const toggle = $("params-toggle");
  toggle.addEventListener("click", () => {
    const open = toggle.getAttribute("aria-expanded") !== "true";
    toggle.setAttribute("aria-expanded", String(open));
    $("params").classList.toggle("open", open);
    if (open) $("model").focus();
  });

  wireCodeView(() => buildRequest({ withDraft: true }));

  state.savedModel = restoreParams();
  wireParams(saveParams);
}

function showBanner(text) {
  const banner = $("banner");
  banner.textContent = `Something went wrong in the page: ${text}. Reload to start again.`;
  banner.hidden = false;
}

window.addEventListener("error", (e) => showBanner(e.message || "unknown error"));
window.addEventListener("unhandledrejection", (e) => showBanner(e.reason?.message || String(e.reason)));

wire();
render();
loadModels();
document.body.dataset.ready = "true";
