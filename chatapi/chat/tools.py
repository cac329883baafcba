"""Tool and function calls: how they reach the model, the grammar that enforces them, and the
parsing of the model's output back into OpenAI's `tool_calls`.

Output formats of the common open model families, chosen from the chat template's text:
  hermes  (Qwen 2/2.5/3, Hermes, many others):  <tool_call>{"name": …, "arguments": {…}}</tool_call>
  llama3  (Llama 3.1+):                           {"name": …, "parameters": {…}}  (the whole reply)
  mistral (Mistral, Mixtral):                     [TOOL_CALLS][{"name": …, "arguments": {…}}, …]

The parser (tool_parser.py) reads text as it streams, in linear time; text that does not parse
as a call of an offered function is ordinary content.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from chatapi.chat.tool_parser import (
    CallArguments,
    CallStart,
    Content,
    Event,
    ParsedOutput,
    ToolCall,
    ToolCallParser,
    ToolFormat,
    new_call_id,
    parse_tool_calls,
)
from chatapi.engine.grammar import GrammarBuilder, literal

__all__ = [
    "CallArguments", "CallStart", "Content", "Event", "FunctionSpec", "ParsedOutput", "ToolCall",
    "ToolCallParser", "ToolFormat", "call_grammar", "detect_format", "inline_history",
    "new_call_id", "openai_history", "parse_tool_calls", "template_takes_tools",
    "tools_system_prompt",
]


@dataclass(frozen=True)
class FunctionSpec:
    """One function the model may call (from `tools` or legacy `functions`)."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool = False

    def as_tool(self) -> dict[str, Any]:
        """The OpenAI tool object, as chat templates expect it in their `tools` variable."""
        function: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            function["description"] = self.description
        function["parameters"] = self.parameters or {"type": "object", "properties": {}}
        return {"type": "function", "function": function}


# --- format detection and prompts ---------------------------------------------------------------

@lru_cache(maxsize=16)
def detect_format(template_source: str) -> ToolFormat:
    """The tool-call format a chat template teaches its model (hermes when it says nothing)."""
    if "[TOOL_CALLS]" in template_source:
        return ToolFormat.MISTRAL
    if "<tool_call>" in template_source:
        return ToolFormat.HERMES
    if "<|python_tag|>" in template_source or "ipython" in template_source:
        return ToolFormat.LLAMA3
    return ToolFormat.HERMES


@lru_cache(maxsize=16)
def template_takes_tools(template_source: str) -> bool:
    """Whether the template renders its `tools` variable at all."""
    return re.search(r"\btools\b", template_source) is not None


def tools_system_prompt(functions: list[FunctionSpec]) -> str:
    """Hermes-style instructions for templates that do not render `tools` themselves."""
    listed = "\n".join(json.dumps(f.as_tool(), ensure_ascii=False) for f in functions)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{listed}\n</tools>\n\nFor each function call, return a json object with "
            "function name and arguments within <tool_call></tool_call> XML tags:\n"
            '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
            "</tool_call>")


def openai_history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Legacy function-calling history in today's shape: an assistant `function_call` becomes
    one `tool_calls` entry, a `function` message a `tool` message answering it."""
    out: list[dict[str, Any]] = []
    last_ids: dict[str, str] = {}
    for message in messages:
        message = dict(message)
        call = message.pop("function_call", None)
        if message.get("role") == "assistant" and isinstance(call, dict):
            call_id = f"call_{len(out)}"
            last_ids[str(call.get("name"))] = call_id
            message["tool_calls"] = [{"id": call_id, "type": "function", "function": call}]
        elif message.get("role") == "function":
            name = str(message.get("name") or "")
            message = {"role": "tool", "content": message.get("content") or "", "name": name,
                       "tool_call_id": last_ids.get(name, "")}
        out.append(message)
    return out


def inline_history(messages: list[dict[str, Any]], functions: list[FunctionSpec]
                   ) -> list[dict[str, Any]]:
    """For templates without tool support: tools in the system prompt, calls and results as
    plain hermes-format text."""
    out: list[dict[str, Any]] = []
    prompt = tools_system_prompt(functions) if functions else ""
    for message in messages:
        role = message.get("role")
        content = message.get("content") or ""
        if role == "assistant" and message.get("tool_calls"):
            calls = "\n".join(_hermes_call_text(c) for c in message["tool_calls"])
            out.append({"role": "assistant", "content": (content + "\n" if content else "")
                        + calls})
        elif role == "tool":
            text = f"<tool_response>\n{content}\n</tool_response>"
            if out and out[-1].get("role") == "user" and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + text
            else:
                out.append({"role": "user", "content": text, "tool_results": True})
        else:
            out.append(dict(message))
    for message in out:
        message.pop("tool_results", None)
    if prompt:
        if out and out[0].get("role") == "system":
            out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def _hermes_call_text(call: dict[str, Any]) -> str:
    function = call.get("function") or {}
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    body = json.dumps({"name": function.get("name"), "arguments": arguments},
                      ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"

# --- grammars for enforced calls ----------------------------------------------------------------

def call_grammar(fmt: ToolFormat, functions: list[FunctionSpec], *, parallel: bool) -> str:
    """A grammar whose sentences are one call (or several, when `parallel`) of the given
    functions in the model's own format, with arguments valid under each function's
    parameters schema. Raises grammar.SchemaError for schemas it cannot enforce."""
    key = json.dumps([fmt.value, parallel, [[f.name, f.parameters] for f in functions]],
                     ensure_ascii=False)
    return _call_grammar(key)


@lru_cache(maxsize=128)
def _call_grammar(key: str) -> str:
    fmt_value, parallel, specs = json.loads(key)
    fmt = ToolFormat(fmt_value)
    builder = GrammarBuilder()
    alternatives = []
    for name, parameters in specs:
        arguments = builder.schema(parameters if parameters is not None else {"type": "object"},
                                   f"{name}-args")
        if fmt is ToolFormat.LLAMA3:
            head = '{"name": "' + name + '", "parameters": '
        else:
            head = '{"name": "' + name + '", "arguments": '
        alternatives.append(f"{literal(head)} {arguments} {literal('}')}")
    call = builder.rule("call", " | ".join(alternatives))
    if fmt is ToolFormat.HERMES:
        block = builder.rule("call-block", f"{literal('<tool_call>' + chr(10))} {call} "
                                           f"{literal(chr(10) + '</tool_call>')}")
        root = f'{block} ( "\\n" {block} )*' if parallel else block
    elif fmt is ToolFormat.MISTRAL:
        more = f' ( ", " {call} )*' if parallel else ""
        root = f'{literal("[TOOL_CALLS]")} "[" {call}{more} "]"'
    else:
        root = call
    return builder.build(root)
