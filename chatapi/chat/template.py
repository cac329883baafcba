"""Chat templates from model metadata, rendered in a jinja2 sandbox with time and size limits."""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import functools
import inspect
import json
import re
import string
import time
import types
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import Any

import jinja2
from jinja2 import nodes, pass_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' ~ message['role'] ~ '\\n' ~ (message['content'] or '') ~ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_PREFIX = "chat template error: "
_GUARD_ITER = "chatapi_guard_iter"
_MAX_INT_BITS = 1 << 16
_MAX_JSON_INDENT = 64
_DUNDER = re.compile(r"__[A-Za-z]")
_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\d*)(?:\.(\d*))?")
_PASS_ARGS = frozenset({"eval_ctx", "environment", "context"})


class TemplateError(ValueError):
    """Rendering failed; the message is safe to show to an API client."""


class TemplateLoadError(ValueError):
    """The template does not compile or is refused by a static check."""


class _Budget:
    """Per-render limits: a wall-clock deadline and a cap on any value's size."""

    def __init__(self, seconds: float, max_chars: int) -> None:
        self.seconds = seconds
        self.max_chars = max_chars
        self.deadline = time.monotonic() + seconds

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateError(f"{_PREFIX}rendering took longer than {self.seconds:g} s")

    def allow(self, size: int, what: str) -> None:
        if size > self.max_chars:
            raise TemplateError(f"{_PREFIX}{what} would exceed {self.max_chars} characters")

    def sized(self, value: Any) -> Any:
        if isinstance(value, str | list | tuple | dict):
            self.allow(len(value), "a string or list in the template")
        return value


_BUDGET: contextvars.ContextVar[_Budget | None] = contextvars.ContextVar("chat_template_budget")


def _size(value: object) -> int:
    if isinstance(value, int):
        return abs(value)
    return 0 if value is None else len(value if isinstance(value, str) else str(value))


def _joined_size(items: Iterable[object], separator: object) -> int:
    items = list(items)
    return sum(_size(item) for item in items) + len(items) * _size(separator)


def _format_size(fmt: str, widths: int, fields: int, values: tuple, starred: bool) -> int:
    if starred:  # widths taken from the arguments
        widths += sum(abs(v) for v in values if isinstance(v, int))
    return len(fmt) + widths + fields * max((_size(v) for v in values), default=0)


def _percent_size(fmt: str, args: object) -> int:
    values = tuple(args.values()) if isinstance(args, dict) else args
    values = values if isinstance(values, tuple) else (values,)
    specs = _PERCENT_SPEC.findall(fmt)
    widths = sum(int(w or 0) + int(p or 0) for w, p in specs)
    return _format_size(fmt, widths, len(specs), values, "*" in fmt)


def _brace_size(fmt: str, args: tuple, kwargs: dict) -> int:
    specs = [spec or "" for _, field, spec, _ in string.Formatter().parse(fmt) if field is not None]
    widths = sum(int(n) for spec in specs for n in re.findall(r"\d+", spec))
    starred = any("{" in spec for spec in specs)
    return _format_size(fmt, widths, len(specs), (*args, *kwargs.values()), starred)


def _pad_size(subject: Any, a: dict) -> int:
    return max(_size(subject), _size(a.get("width", 0)))


def _replace_size(subject: Any, a: dict) -> int:
    return _size(subject) + (_size(subject) + 1) * _size(a["new"])


# upper bounds on what an amplifying str method or filter would build, checked before it runs
_Growth = Callable[[Any, dict[str, Any]], int]
_METHOD_GROWTH: dict[str, _Growth] = dict.fromkeys(("center", "ljust", "rjust", "zfill"), _pad_size)
_METHOD_GROWTH |= {
    "replace": _replace_size,
    "expandtabs": lambda s, a: _size(s) * max(1, _size(a["tabsize"])),
    "join": lambda s, a: _joined_size(a["iterable"], s),
}
_FILTER_GROWTH: dict[str, _Growth] = {
    "center": _pad_size,
    "replace": _replace_size,
    "indent": lambda s, a: _size(s) + (str(s).count("\n") + 1) * _size(a["width"]),
    "wordwrap": lambda s, a: _size(s) * (1 + _size(a["wrapstring"] or "\n")),
    "join": lambda s, a: _joined_size(s, a["d"]),
    "format": lambda s, a: _percent_size(str(s), a["args"] or a["kwargs"]),
}


def _bind_bounded(
    budget: _Budget, signature: inspect.Signature, growth: _Growth, what: str,
    subject: Any, args: tuple, kwargs: dict,
) -> tuple[tuple, dict]:
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    for name, value in bound.arguments.items():
        if isinstance(value, Iterator):  # measured and then passed on, so read it once
            bound.arguments[name] = list(value)
    if subject is None:
        subject = next(v for k, v in bound.arguments.items() if k not in _PASS_ARGS)
    budget.allow(growth(subject, bound.arguments), f"{what}()")
    return bound.args, bound.kwargs


def _raise_exception(message: object) -> None:
    raise TemplateError(f"{_PREFIX}{message}")


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | str | None = None,
    separators: tuple[str, str] | None = None, sort_keys: bool = False,
) -> str:
    if _size(indent) > _MAX_JSON_INDENT or sum(map(_size, separators or ())) > _MAX_JSON_INDENT:
        raise TemplateError(f"{_PREFIX}tojson indent or separators too large")
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


@pass_context
def _guard_iter(context: Context, iterable: Iterable[Any]) -> Iterator[Any]:
    budget = context.environment.budget()
    for item in iterable:
        budget.tick()
        yield item


class _GuardedCodeGenerator(CodeGenerator):
    """Compiles every for-loop to tick the clock, and every `~` to check its result's size."""

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in list(node.find_all(nodes.For)):
            loop.iter = nodes.Filter(loop.iter, _GUARD_ITER, [], [], None, None, lineno=loop.lineno)
        super().visit_Template(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked(")
        super().visit_Concat(node, frame)
        self.write(")")


class _GenerationTag(Extension):
    """Accepts HF's `{% generation %}` training marker and renders its body unchanged."""

    tags = {"generation"}

    def parse(self, parser: Parser) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


class _ChatSandbox(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus a clock and size checks on every call, lookup and operator."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def __init__(self, max_render_seconds: float, max_output_chars: int) -> None:
        super().__init__(
            trim_blocks=True, lstrip_blocks=True, finalize=self.checked,
            extensions=["jinja2.ext.loopcontrols", _GenerationTag],
        )
        self.max_render_seconds = max_render_seconds
        self.max_output_chars = max_output_chars
        self.globals.pop("lipsum", None)  # lipsum(n) has no bound on n
        self.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
        self.filters["tojson"] = _tojson
        self.filters = {name: self._guard_filter(name, f) for name, f in self.filters.items()}
        self.filters[_GUARD_ITER] = _guard_iter

    def budget(self) -> _Budget:
        # outside render() (constant folding at compile time) a fresh budget still bounds sizes
        current = _BUDGET.get(None)
        return current or _Budget(self.max_render_seconds, self.max_output_chars)

    def checked(self, value: Any) -> Any:
        budget = self.budget()
        budget.tick()
        return budget.sized(value)

    def _guard_filter(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        growth = _FILTER_GROWTH.get(name)
        signature = inspect.signature(func) if growth else None

        @functools.wraps(func)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            budget = self.budget()
            budget.tick()
            if growth is not None and signature is not None:
                args, kwargs = _bind_bounded(budget, signature, growth, name, None, args, kwargs)
            return budget.sized(func(*args, **kwargs))

        return guarded

    def getattr(self, obj: Any, attribute: str) -> Any:
        return self.checked(super().getattr(obj, attribute))

    def getitem(self, obj: Any, argument: Any) -> Any:
        return self.checked(super().getitem(obj, argument))

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        # fail loudly instead of rendering an empty Undefined
        raise TemplateError(
            f"{_PREFIX}access to attribute {attribute!r} of {type(obj).__name__!r} is not allowed"
        )

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = self.budget()
        budget.tick()
        for value in (*args, *kwargs.values()):
            budget.sized(value)
        subject = getattr(obj, "__self__", None)
        if isinstance(obj, types.BuiltinMethodType) and isinstance(subject, str):
            growth = _METHOD_GROWTH.get(obj.__name__)
            if growth is not None:
                signature = inspect.signature(obj)
                args, kwargs = _bind_bounded(
                    budget, signature, growth, obj.__name__, subject, args, kwargs
                )
        return budget.sized(super().call(context, obj, *args, **kwargs))

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = self.budget()
        budget.tick()
        if operator == "*":
            _check_product(budget, left, right)
        elif operator == "**" and isinstance(left, int) and isinstance(right, int):
            if abs(left) > 1 and right * abs(left).bit_length() > _MAX_INT_BITS:
                raise TemplateError(f"{_PREFIX}number too large in '**'")
        elif operator == "%" and isinstance(left, str):
            budget.allow(_percent_size(left, right), "'%' formatting")
        return budget.sized(super().call_binop(context, operator, left, right))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        formatter = super().wrap_str_format(value)
        if formatter is None:
            return None
        fmt: str = value.__self__

        @functools.wraps(formatter)
        def bounded(*args: Any, **kwargs: Any) -> str:
            mapping = args[0] if value.__name__ == "format_map" and args else {}
            size = _brace_size(fmt, args, {**kwargs, **dict(mapping)})
            self.budget().allow(size, "str.format()")
            return formatter(*args, **kwargs)

        return bounded


def _check_product(budget: _Budget, left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > _MAX_INT_BITS:
            raise TemplateError(f"{_PREFIX}number too large in '*'")
        return
    count, sequence = (left, right) if isinstance(left, int) else (right, left)
    if isinstance(count, int) and isinstance(sequence, str | list | tuple):
        budget.allow(len(sequence) * max(count, 0), "'*' repetition")


def _refuse_dunders(env: jinja2.Environment, source: str) -> None:
    """Refuses names and strings in template code that reach for `__dunder__` attributes."""
    for lineno, kind, value in env.lex(source):
        if kind in ("name", "string") and _DUNDER.search(value):
            raise TemplateLoadError(
                f"chat template refused: line {lineno} uses a double-underscore name ({value})"
            )


def _text_of(parts: list[Any]) -> str:
    texts = []
    for part in parts:
        if not isinstance(part, dict) or part.get("type") != "text":
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise TemplateError(f"{_PREFIX}content part of type {kind!r} is not supported")
        texts.append(str(part.get("text") or ""))
    return "\n".join(texts)


def _decoded_tool_call(call: Any) -> Any:
    # HF templates expect arguments as an object; OpenAI clients send a JSON string
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("arguments"), str):
        return call
    try:
        arguments = json.loads(function["arguments"])
    except ValueError:
        return call
    if not isinstance(arguments, dict):
        return call
    return {**call, "function": {**function, "arguments": arguments}}


def _normalized(messages: list[dict]) -> list[dict]:
    result = []
    for message in messages:
        if not isinstance(message, dict):
            raise TemplateError(f"{_PREFIX}each message must be an object")
        message = dict(message)
        if isinstance(message.get("content"), list):
            message["content"] = _text_of(message["content"])
        if isinstance(message.get("tool_calls"), list):
            message["tool_calls"] = [_decoded_tool_call(c) for c in message["tool_calls"]]
        result.append(message)
    return result


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "recursion too deep"
    if isinstance(exc, MemoryError):
        return "out of memory"
    text = getattr(exc, "message", None) or str(exc)
    return text or type(exc).__name__


class ChatTemplate:
    """A model's chat template, compiled once and rendered in a bounded sandbox."""

    def __init__(
        self, source: str, *, bos_token: str = "", eos_token: str = "",
        max_render_seconds: float = 2.0, max_output_chars: int = 4_000_000,
    ) -> None:
        if not isinstance(source, str) or not source.strip():
            raise TemplateLoadError("chat template is empty")
        if max_render_seconds <= 0 or max_output_chars <= 0:
            raise ValueError("max_render_seconds and max_output_chars must be positive")
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.max_render_seconds = max_render_seconds
        self.max_output_chars = max_output_chars
        self._env = _ChatSandbox(max_render_seconds, max_output_chars)
        try:
            _refuse_dunders(self._env, source)
            self._template = self._env.from_string(source)
        except TemplateLoadError:
            raise
        except jinja2.TemplateSyntaxError as exc:
            raise TemplateLoadError(
                f"chat template does not compile: {exc.message} (line {exc.lineno})"
            ) from exc
        except Exception as exc:
            raise TemplateLoadError(f"chat template does not compile: {_describe(exc)}") from exc

    def render(
        self, messages: list[dict], *, tools: list[dict] | None = None,
        add_generation_prompt: bool = True, **extra: object,
    ) -> str:
        """Renders the prompt; any failure is a TemplateError with a client-readable message."""
        budget = _Budget(self.max_render_seconds, self.max_output_chars)
        token = _BUDGET.set(budget)
        try:
            variables = {
                **extra,
                "messages": _normalized(messages),
                "tools": tools,
                "add_generation_prompt": add_generation_prompt,
                "bos_token": self.bos_token,
                "eos_token": self.eos_token,
            }
            return self._collect(self._template.generate(variables), budget)
        except TemplateError:
            raise
        except Exception as exc:
            raise TemplateError(f"{_PREFIX}{_describe(exc)}") from exc
        finally:
            _BUDGET.reset(token)

    @staticmethod
    def _collect(chunks: Generator[str, None, None], budget: _Budget) -> str:
        parts: list[str] = []
        total = 0
        with contextlib.closing(chunks):
            for chunk in chunks:
                total += len(chunk)
                budget.allow(total, "the rendered prompt")
                budget.tick()
                parts.append(chunk)
        return "".join(parts)
