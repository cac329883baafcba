"""Chat templates render HF-style prompts, and a hostile template cannot escape, hang or bloat."""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import time
from pathlib import Path

import pytest

from chatapi.chat.template import (
    DEFAULT_CHAT_TEMPLATE,
    ChatTemplate,
    TemplateError,
    TemplateLoadError,
)

SEED = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "Write hello world in Python."},
]
SEED_CHATML = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nHi!<|im_end|>\n"
    "<|im_start|>assistant\nHello! How can I help?<|im_end|>\n"
    "<|im_start|>user\nWrite hello world in Python.<|im_end|>\n"
    "<|im_start|>assistant\n"
)

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}

PARIS_CALL = {
    "id": "call_1",
    "type": "function",
    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
}

# modelled on Qwen2.5's template: default system prompt, <tools>, <tool_call>, <tool_response>
QWEN_LIKE = """
{%- if messages[0].role == 'system' %}
    {%- set system = messages[0].content %}
{%- else %}
    {%- set system = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' %}
{%- endif %}
{{- '<|im_start|>system\\n' + system }}
{%- if tools %}
    {{- '\\n\\n# Tools\\n\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' + tool | tojson }}
    {%- endfor %}
    {{- '\\n</tools>' }}
{%- endif %}
{{- '<|im_end|>\\n' }}
{%- for message in messages %}
    {%- if message.role == 'user' or (message.role == 'assistant' and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
    {%- elif message.role == 'assistant' %}
        {{- '<|im_start|>assistant' }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def render(source: str, messages: list[dict] | None = None, **kwargs: object) -> str:
    return ChatTemplate(source, max_render_seconds=0.5).render(messages or SEED[1:2], **kwargs)


def test_default_chatml_renders_roles_and_generation_prompt_exactly() -> None:
    template = ChatTemplate(DEFAULT_CHAT_TEMPLATE)
    assert template.render(SEED) == SEED_CHATML
    without_prompt = template.render(SEED, add_generation_prompt=False)
    assert without_prompt == SEED_CHATML.removesuffix("<|im_start|>assistant\n")


def test_none_content_renders_empty() -> None:
    text = ChatTemplate(DEFAULT_CHAT_TEMPLATE).render(
        [{"role": "assistant", "content": None}], add_generation_prompt=False
    )
    assert text == "<|im_start|>assistant\n<|im_end|>\n"


def test_content_parts_are_joined_into_one_string() -> None:
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    text = render("{{ messages[0].content }}", [{"role": "user", "content": parts}])
    assert text == "first\nsecond"


def test_non_text_content_part_is_a_template_error() -> None:
    parts = [{"type": "image_url", "image_url": {"url": "http://x"}}]
    with pytest.raises(TemplateError, match="image_url"):
        render("{{ messages[0].content }}", [{"role": "user", "content": parts}])


def test_render_does_not_modify_the_callers_messages() -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    snapshot = json.dumps(messages)
    render("{{ messages[0].content }}", messages)
    assert json.dumps(messages) == snapshot


def test_raise_exception_becomes_template_error_with_its_message() -> None:
    source = "{{ raise_exception('Conversation roles must alternate user/assistant') }}"
    with pytest.raises(TemplateError) as caught:
        render(source)
    assert str(caught.value) == (
        "chat template error: Conversation roles must alternate user/assistant"
    )


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("{{ messages[0].content + 1 }}", "concatenate"),
        ("{{ messages[0].nothing.deeper }}", "nothing"),
        ("{{ range(10**12) | list }}", "range"),
        ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "recursion"),
    ],
)
def test_errors_inside_the_template_become_template_errors(source: str, needle: str) -> None:
    with pytest.raises(TemplateError, match=needle):
        render(source)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ ''|attr('__class__') }}",
        "{{ messages['__class__'] }}",
        "{{ {% oops",
    ],
)
def test_dunder_or_broken_templates_are_refused_at_load(source: str) -> None:
    with pytest.raises(TemplateLoadError):
        ChatTemplate(source)


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''|attr('_'*2 ~ 'class' ~ '_'*2) }}",
        "{{ (cycler|attr('_'*2 ~ 'init' ~ '_'*2))|attr('_'*2 ~ 'globals' ~ '_'*2) }}",
        "{% set u = '_' * 2 %}{{ messages[u ~ 'class' ~ u] }}",
        "{{ ({}|attr('mro')) or (dict|attr('mro'))() }}",
        "{% set u = '_' * 2 %}{{ (('{0.' ~ u ~ 'class' ~ u ~ '}')|attr('format'))('y') }}",
        "{% set u = '_' * 2 %}{{ ('{0.' ~ u ~ 'class' ~ u ~ '}').format_map({'0': 'y'}) }}",
    ],
)
def test_obfuscated_attribute_access_fails_without_leaking(source: str) -> None:
    with pytest.raises(TemplateError) as caught:
        render(source)
    assert "<class" not in str(caught.value) and "function" not in str(caught.value)


@pytest.mark.parametrize(
    "source",
    [
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
        "{% set s = 'x' * 300000 %}{% for c in s %}{% for d in s %}{% endfor %}{% endfor %}",
        "{% set r = range(100000)|list %}{% for i in r %}{% for j in r %}{% endfor %}{% endfor %}",
    ],
)
def test_endless_loops_are_stopped_by_the_time_limit(source: str) -> None:
    template = ChatTemplate(source, max_render_seconds=0.5)
    started = time.monotonic()
    with pytest.raises(TemplateError):
        template.render(SEED)
    assert time.monotonic() - started < 3


def test_time_limit_message_is_readable() -> None:
    source = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
    with pytest.raises(TemplateError, match=r"rendering took longer than 0.5 s"):
        render(source)


@pytest.mark.parametrize(
    "source",
    [
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
        "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s | length }}",
        "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s|length }}"
        "{% endif %}{% endmacro %}{{ d('ab', 64) }}",
        "{% set a = 'x' * 3000000 %}{% set b = a ~ a %}{% set c = b ~ b %}{{ c|length }}",
        "{% set a = 'x' * 3000000 %}{% set b %}{{ a }}{{ a }}{% endset %}"
        "{% set c %}{{ b }}{{ b }}{% endset %}{{ c|length }}",
        "{{ 'a' * 10**10 }}",
        "{{ ['a'] * 10**9 }}",
        "{{ 'a'|center(10**9) }}",
        "{{ 'a'.rjust(10**9) }}",
        "{{ ('x' * 100000).replace('x', 'y' * 100000) }}",
        "{{ ('x' * 100000)|replace('x', 'y' * 100000) }}",
        "{{ ('y' * 100000).join(range(100000)|map('string')) }}",
        "{{ range(100000)|join('y' * 100000) }}",
        "{{ '%099999999999d' % 1 }}",
        "{{ '%099999999999d'|format(1) }}",
        "{{ '{:>099999999999}'.format(1) }}",
        "{{ ('\n' * 100000)|indent(100000) }}",
        "{{ 2 ** (10 ** 10) }}",
    ],
)
def test_size_blow_ups_are_template_errors(source: str) -> None:
    template = ChatTemplate(source, max_output_chars=4_000_000, max_render_seconds=2.0)
    started = time.monotonic()
    with pytest.raises(TemplateError):
        template.render(SEED)
    assert time.monotonic() - started < 3


def test_output_larger_than_the_cap_is_refused() -> None:
    source = "{% for i in range(1000) %}0123456789{% endfor %}"
    template = ChatTemplate(source, max_output_chars=5000)
    with pytest.raises(TemplateError, match="5000 characters"):
        template.render(SEED)
    assert len(ChatTemplate("{{ 'x' * 5000 }}", max_output_chars=5000).render(SEED)) == 5000


def test_tools_are_visible_and_none_when_absent() -> None:
    source = "{% if tools is none %}none{% else %}{{ tools[0].function.name }}{% endif %}"
    assert render(source) == "none"
    assert render(source, tools=[WEATHER_TOOL]) == "get_weather"


def test_extra_variables_and_special_tokens_reach_the_template() -> None:
    source = "{{ bos_token }}{{ enable_thinking }}{{ eos_token }}"
    template = ChatTemplate(source, bos_token="<s>", eos_token="</s>")
    assert template.render(SEED, enable_thinking=False) == "<s>False</s>"


def test_strftime_now_formats_the_current_local_time() -> None:
    before = datetime.datetime.now().strftime("%Y-%m")
    text = render("{{ strftime_now('%Y-%m') }}")
    assert text in {before, datetime.datetime.now().strftime("%Y-%m")}


def test_tojson_keeps_unicode_and_accepts_hf_keyword_arguments() -> None:
    source = (
        "{{ x | tojson }}|{{ x | tojson(indent=2, sort_keys=true) }}|"
        "{{ x | tojson(separators=(',', ':')) }}"
    )
    x = {"b": "é", "a": [1]}
    compact = json.dumps(x, ensure_ascii=False)
    indented = json.dumps(x, ensure_ascii=False, indent=2, sort_keys=True)
    tight = json.dumps(x, ensure_ascii=False, separators=(",", ":"))
    assert render(source, x=x) == f"{compact}|{indented}|{tight}"


def test_loopcontrols_and_generation_tag_are_available() -> None:
    source = (
        "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
        "{% generation %}{{ m.role }};{% endgeneration %}{% endfor %}"
    )
    assert render(source, SEED) == "system;user;"


def test_qwen_like_template_with_default_system_tools_and_tool_messages() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [PARIS_CALL],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    ]
    text = ChatTemplate(QWEN_LIKE).render(messages, tools=[WEATHER_TOOL])
    assert text == (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        "\n\n# Tools\n\n<tools>\n" + json.dumps(WEATHER_TOOL, ensure_ascii=False) + "\n</tools>"
        "<|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\n<tool_response>\n{\"temp_c\": 21}\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_qwen_like_template_keeps_a_given_system_message() -> None:
    assert ChatTemplate(QWEN_LIKE).render(SEED) == SEED_CHATML


def test_concurrent_renders_keep_their_own_budgets() -> None:
    from concurrent.futures import ThreadPoolExecutor

    template = ChatTemplate(DEFAULT_CHAT_TEMPLATE)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: template.render(SEED), range(32)))
    assert results == [SEED_CHATML] * 32


def _model_path() -> Path:
    home = os.environ.get("CHATAPI_HOME")
    base = Path(home).expanduser() if home else Path.home() / ".cache" / "chatapi"
    return base / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"


def _gguf_chat_template(path: Path) -> str:
    import llama_cpp

    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    assert model, f"llama.cpp could not load {path}"
    try:
        key, size = b"tokenizer.chat_template", 1 << 16
        buf = ctypes.create_string_buffer(size)
        length = llama_cpp.llama_model_meta_val_str(model, key, buf, size)
        if length >= size:
            buf = ctypes.create_string_buffer(length + 1)
            length = llama_cpp.llama_model_meta_val_str(model, key, buf, length + 1)
        assert length > 0, "the model has no tokenizer.chat_template"
        return buf.value.decode("utf-8")
    finally:
        llama_cpp.llama_model_free(model)


@pytest.mark.model
def test_real_qwen_template_from_the_default_model_renders_the_seed_conversation() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"llama_cpp is not importable: {exc}")
    path = _model_path()
    if not path.is_file():
        pytest.skip(f"default model not assembled at {path}")
    template = ChatTemplate(_gguf_chat_template(path))
    assert template.render(SEED) == SEED_CHATML
    round_trip = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [PARIS_CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'},
    ]
    text = template.render(round_trip, tools=[WEATHER_TOOL])
    assert text.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")
    assert "<tools>\n" + json.dumps(WEATHER_TOOL, ensure_ascii=False) + "\n</tools>" in text
    call = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert f"<tool_call>\n{call}\n</tool_call>" in text
    assert "<tool_response>\n{\"temp_c\": 21}\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")
