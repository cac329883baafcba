// The parameters panel: read the fields into request parameters, keep them in localStorage.

const STORAGE_KEY = "chatapi.playground.params";
const $ = (id) => document.getElementById(id);

/** Raised when a field cannot be turned into a valid parameter; names the field. */
export class ParamError extends Error {
  constructor(field, message) {
    super(message);
    this.name = "ParamError";
    this.field = field;
  }
}

const NUMBER_FIELDS = ["temperature", "top_p", "max_tokens", "seed",
  "presence_penalty", "frequency_penalty"];
const TEXT_FIELDS = ["stop_sequences", "json_schema", "tools", "response_format", "tool_choice"];

export const EXAMPLE_SCHEMA = {
  name: "answer",
  strict: true,
  schema: {
    type: "object",
    properties: {
      answer: { type: "string" },
      confidence: { type: "number" },
    },
    required: ["answer", "confidence"],
    additionalProperties: false,
  },
};

export const EXAMPLE_TOOLS = [{
  type: "function",
  function: {
    name: "get_weather",
    description: "Get the current weather in a city.",
    parameters: {
      type: "object",
      properties: {
        city: { type: "string", description: "City name, e.g. Paris" },
        unit: { type: "string", enum: ["celsius", "fahrenheit"] },
      },
      required: ["city"],
    },
  },
}];

function numberOrNull(id) {
  const raw = $(id).value.trim();
  if (raw === "") return null;
  const value = Number(raw);
  if (!Number.isFinite(value)) throw new ParamError(id, `${labelOf(id)} must be a number.`);
  return value;
}

function labelOf(id) {
  return document.querySelector(`label[for="${id}"]`)?.textContent.trim() || id;
}

function parseJsonField(id, errorId) {
  const raw = $(id).value.trim();
  const error = $(errorId);
  if (!raw) {
    error.hidden = true;
    return null;
  }
  try {
    const value = JSON.parse(raw);
    error.hidden = true;
    return value;
  } catch (err) {
    error.textContent = `Not valid JSON: ${err.message}`;
    error.hidden = false;
    throw new ParamError(id, `${labelOf(id)}: not valid JSON (${err.message}).`);
  }
}

/** Accept OpenAI tools, or bare function definitions, and return OpenAI's tools array. */
function normalizeTools(value) {
  if (value === null) return [];
  const list = Array.isArray(value) ? value : [value];
  return list.map((tool, i) => {
    if (tool && tool.type === "function" && tool.function) return tool;
    if (tool && typeof tool.name === "string") return { type: "function", function: tool };
    throw new ParamError("tools",
      `Tools: item ${i} is not a function tool ({"type": "function", "function": {"name": ...}}).`);
  });
}

/**
 * The request parameters the panel describes (everything but model, messages and stream).
 * Parameters left at the API's default are left out, so the request and the code stay short.
 */
export function readParams() {
  const params = {};
  const temperature = numberOrNull("temperature");
  if (temperature !== null) params.temperature = temperature;
  const topP = numberOrNull("top_p");
  if (topP !== null && topP !== 1) params.top_p = topP;
  const maxTokens = numberOrNull("max_tokens");
  if (maxTokens !== null) {
    if (!Number.isInteger(maxTokens) || maxTokens < 1) {
      throw new ParamError("max_tokens", "Max tokens must be a whole number of at least 1.");
    }
    params.max_tokens = maxTokens;
  }
  const stop = $("stop_sequences").value.split("\n").map((s) => s.replace(/\\n/g, "\n"))
    .filter((s) => s.trim() !== "");
  if (stop.length) params.stop = stop;
  const seed = numberOrNull("seed");
  if (seed !== null) {
    if (!Number.isInteger(seed)) throw new ParamError("seed", "Seed must be a whole number.");
    params.seed = seed;
  }
  for (const id of ["presence_penalty", "frequency_penalty"]) {
    const value = numberOrNull(id);
    if (value !== null && value !== 0) params[id] = value;
  }
  const format = $("response_format").value;
  if (format === "json_object") params.response_format = { type: "json_object" };
  if (format === "json_schema") {
    const schema = parseJsonField("json_schema", "schema-error");
    if (!schema || typeof schema !== "object" || Array.isArray(schema)) {
      throw new ParamError("json_schema", "JSON schema: give an object with name and schema.");
    }
    params.response_format = { type: "json_schema", json_schema: schema };
  }
  const tools = normalizeTools(parseJsonField("tools", "tools-error"));
  if (tools.length) {
    params.tools = tools;
    const choice = $("tool_choice").value;
    if (choice !== "auto") params.tool_choice = choice;
  }
  return params;
}

export function saveParams() {
  const saved = { model: $("model").value };
  for (const id of [...NUMBER_FIELDS, ...TEXT_FIELDS]) saved[id] = $(id).value;
  try {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(saved));
  } catch {
    // storage full or disabled: the panel still works for this visit
  }
}

/** Restore saved fields; returns the saved model id (the model list arrives later). */
export function restoreParams() {
  let saved = {};
  try {
    saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || "{}") || {};
  } catch {
    saved = {};
  }
  for (const id of [...NUMBER_FIELDS, ...TEXT_FIELDS]) {
    if (typeof saved[id] === "string") $(id).value = saved[id];
  }
  if (!$("json_schema").value.trim()) $("json_schema").value = JSON.stringify(EXAMPLE_SCHEMA, null, 2);
  return typeof saved.model === "string" ? saved.model : "";
}

/** Keep each range slider and its number box in step; show the schema editor when chosen. */
export function wireParams(onChange) {
  for (const id of ["temperature", "top_p"]) {
    const box = $(id);
    const range = $(`${id}-range`);
    range.value = box.value || box.getAttribute("value");
    range.addEventListener("input", () => {
      box.value = range.value;
      onChange();
    });
    box.addEventListener("input", () => {
      if (box.value !== "") range.value = box.value;
    });
  }
  const format = $("response_format");
  const showSchema = () => {
    $("schema-field").hidden = format.value !== "json_schema";
  };
  format.addEventListener("change", showSchema);
  showSchema();
  $("tools-example").addEventListener("click", () => {
    $("tools").value = JSON.stringify(EXAMPLE_TOOLS, null, 2);
    $("tools-error").hidden = true;
    onChange();
    $("tools").focus();
  });
  $("params").addEventListener("input", onChange);
  $("params").addEventListener("change", onChange);
}
