// Drawing the conversation. Model and user text only ever reaches the page as textContent
// or through renderMarkdown (which escapes everything first).

import { renderMarkdown } from "./markdown.js";

const ROLE_NAMES = { user: "User", assistant: "Assistant", tool: "Tool", system: "System" };

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "text") node.textContent = value;
    else if (key === "className") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

/** Fill `body` with an assistant reply (Markdown) or plain text for other roles. */
export function fillBody(body, message) {
  if (message.role === "assistant") {
    body.innerHTML = renderMarkdown(message.content || "");
  } else {
    body.textContent = message.content || "";
  }
}

function formatMs(ms) {
  return ms >= 1000 ? `${(ms / 1000).toFixed(2)} s` : `${Math.round(ms)} ms`;
}

/** The line under a finished reply: finish_reason, token counts, latency and speed. */
export function metaLine(meta) {
  const parts = [];
  const add = (key, label, value) =>
    parts.push(el("span", { className: "meta-item", "data-meta": key }, [
      el("span", { className: "meta-label", text: label }), ` ${value}`]));
  add("finish_reason", "finish_reason", meta.finishReason || "none");
  const usage = meta.usage;
  if (usage) {
    add("prompt_tokens", "prompt", usage.prompt_tokens ?? "?");
    add("completion_tokens", "completion", usage.completion_tokens ?? "?");
    add("cached_tokens", "cached", usage.prompt_tokens_details?.cached_tokens ?? 0);
  }
  if (meta.ttftMs != null) add("ttft", "first token", formatMs(meta.ttftMs));
  const tokens = usage?.completion_tokens;
  const decodeMs = meta.elapsedMs - (meta.ttftMs ?? 0);
  if (tokens > 1 && decodeMs > 0) {
    add("tokens_per_second", "speed", `${((tokens - 1) / (decodeMs / 1000)).toFixed(1)} tok/s`);
  } else if (meta.elapsedMs) {
    add("elapsed", "time", formatMs(meta.elapsedMs));
  }
  return el("p", { className: "msg-meta" }, parts);
}

function prettyArguments(text) {
  try {
    return JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    return text; // partial (still streaming) or not JSON: show as sent
  }
}

/** Cards for an assistant message's tool calls, with a result box for each unanswered one. */
function toolCards(message, index, ctx) {
  const cards = message.tool_calls.map((call, n) => {
    const answered = ctx.toolResult(call.id);
    const card = el("div", { className: "tool-call", "data-tool-call-id": call.id }, [
      el("p", { className: "tool-call-head" }, [
        el("span", { className: "badge", text: "tool call" }),
        el("strong", { className: "tool-name", text: call.function?.name || "(unnamed)" }),
        el("span", { className: "tool-id", text: call.id }),
      ]),
      el("pre", { className: "tool-args" }, [
        el("code", { text: prettyArguments(call.function?.arguments || "") })]),
    ]);
    if (!answered && !message.streaming) {
      const id = `tool-result-${index}-${n}`;
      const box = el("textarea", { id, rows: 2, className: "code-input",
        placeholder: "What the function returned, e.g. {\"temperature\": 21}" });
      box.value = ctx.draft(call.id);
      box.addEventListener("input", () => ctx.setDraft(call.id, box.value));
      const submit = () => ctx.submitToolResult(index, call, box.value);
      box.addEventListener("keydown", (e) => {
        if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
          e.preventDefault();
          submit();
        }
      });
      card.append(el("div", { className: "tool-result-form" }, [
        el("label", { for: id, text: `Result of ${call.function?.name || "the call"}` }),
        box,
        el("button", { type: "button", className: "primary", text: "Send result",
          onclick: submit }),
      ]));
    }
    return card;
  });
  return el("div", { className: "tool-calls" }, cards);
}

function actions(message, index, ctx) {
  const label = `${ROLE_NAMES[message.role] || message.role} message ${index + 1}`;
  return el("div", { className: "msg-actions" }, [
    el("button", { type: "button", className: "icon", text: "Edit", "aria-label": `Edit ${label}`,
      disabled: ctx.busy, onclick: () => ctx.startEdit(index) }),
    el("button", { type: "button", className: "icon", text: "Delete",
      "aria-label": `Delete ${label}`, disabled: ctx.busy, onclick: () => ctx.remove(index) }),
  ]);
}

function editor(message, index, ctx) {
  const id = `edit-${index}`;
  const box = el("textarea", { id, rows: Math.min(12, (message.content || "").split("\n").length + 1) });
  box.value = message.content || "";
  const save = () => ctx.saveEdit(index, box.value, false);
  box.addEventListener("keydown", (e) => {
    if (e.key === "Escape") ctx.cancelEdit();
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) save();
  });
  return el("div", { className: "msg-editor" }, [
    el("label", { for: id, className: "visually-hidden", text: "Edit the message" }),
    box,
    el("div", { className: "editor-buttons" }, [
      message.role === "user" ? el("button", { type: "button", className: "primary",
        text: "Save & resend", onclick: () => ctx.saveEdit(index, box.value, true) }) : null,
      el("button", { type: "button", className: message.role === "user" ? "" : "primary",
        text: "Save", onclick: save }),
      el("button", { type: "button", className: "ghost", text: "Cancel",
        onclick: () => ctx.cancelEdit() }),
    ]),
  ]);
}

function messageItem(message, index, ctx) {
  const roleName = message.role === "tool" && message.name
    ? `Tool result · ${message.name}` : ROLE_NAMES[message.role] || message.role;
  const head = el("div", { className: "msg-head" }, [
    el("span", { className: "role", text: roleName }),
    message.streaming ? null : actions(message, index, ctx),
  ]);
  const item = el("li", { className: `msg msg-${message.role}`, "data-index": index,
    "data-role": message.role, "aria-busy": message.streaming ? "true" : null }, [head]);
  if (ctx.editing === index) {
    item.append(editor(message, index, ctx));
  } else if (message.content || message.streaming || !message.tool_calls) {
    const body = el("div", { className: message.role === "assistant" ? "msg-body markdown"
      : "msg-body plain" });
    fillBody(body, message);
    if (message.streaming && !message.content) body.append(el("span", { className: "typing",
      text: "…", "aria-label": "waiting for the first token" }));
    item.append(body);
  }
  if (message.tool_calls?.length) item.append(toolCards(message, index, ctx));
  if (message.meta) item.append(metaLine(message.meta));
  return item;
}

/** Redraw the whole message list (cheap at chat sizes; streaming updates one body only). */
export function renderMessages(list, messages, ctx) {
  list.replaceChildren(...messages.map((m, i) => messageItem(m, i, ctx)));
  if (ctx.error) {
    const err = ctx.error;
    list.append(el("li", { className: "msg msg-error", role: "alert" }, [
      el("p", { className: "error-title", text: err.label ? `Error ${err.label}` : "Error" }),
      el("p", { className: "error-text", text: err.message }),
      err.hint ? el("p", { className: "error-hint", text: err.hint }) : null,
    ]));
  }
}
