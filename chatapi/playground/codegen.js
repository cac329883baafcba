// "View code": the current request as a Python snippet (today's `openai` package) and as curl.

const PY_NAME = /^[A-Za-z_][A-Za-z0-9_]*$/;

/** A Python literal for a JSON value, indented like `json.dumps(indent=4)`. */
export function pythonLiteral(value, indent = 0) {
  const pad = " ".repeat(indent);
  const inner = " ".repeat(indent + 4);
  if (value === null || value === undefined) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (typeof value === "number") return Number.isFinite(value) ? String(value) : "None";
  // JSON string escapes (\n, \", \\, \uXXXX) mean the same in Python string literals.
  if (typeof value === "string") return JSON.stringify(value);
  if (Array.isArray(value)) {
    if (!value.length) return "[]";
    return `[\n${value.map((v) => inner + pythonLiteral(v, indent + 4)).join(",\n")},\n${pad}]`;
  }
  const keys = Object.keys(value);
  if (!keys.length) return "{}";
  const items = keys.map((k) => `${inner}${JSON.stringify(k)}: ${pythonLiteral(value[k], indent + 4)}`);
  return `{\n${items.join(",\n")},\n${pad}}`;
}

/** Python code that sends `request` with the openai package (>= 1.0). */
export function pythonSnippet(request, baseUrl) {
  const { stream: _stream, stream_options: _options, ...params } = request;
  const args = Object.entries(params).map(([key, value]) =>
    PY_NAME.test(key) ? `    ${key}=${pythonLiteral(value, 4)},` : "");
  const usesTools = Array.isArray(params.tools) && params.tools.length > 0;
  return [
    "import os",
    "",
    "from openai import OpenAI",
    "",
    "client = OpenAI(",
    `    base_url=${JSON.stringify(baseUrl)},`,
    '    api_key=os.environ.get("CHATAPI_API_KEY", "none"),',
    ")",
    "",
    "completion = client.chat.completions.create(",
    ...args.filter(Boolean),
    ")",
    "",
    "message = completion.choices[0].message",
    "print(message.content)",
    ...(usesTools ? ["for call in message.tool_calls or []:",
      "    print(call.function.name, call.function.arguments)"] : []),
    "",
  ].join("\n");
}

function shellQuote(text) {
  return `'${String(text).replace(/'/g, "'\\''")}'`;
}

/** A curl command for `request` (non-streaming, so its answer is one JSON body). */
export function curlSnippet(request, baseUrl, { withKey = true } = {}) {
  const { stream: _stream, stream_options: _options, ...params } = request;
  const lines = [
    `curl ${shellQuote(`${baseUrl}/chat/completions`)} \\`,
    '  -H "Content-Type: application/json" \\',
  ];
  if (withKey) lines.push('  -H "Authorization: Bearer $CHATAPI_API_KEY" \\');
  lines.push(`  -d ${shellQuote(JSON.stringify(params, null, 2))}`);
  return lines.join("\n") + "\n";
}
