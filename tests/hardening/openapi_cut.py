"""OpenAI's published spec cut down to the operations chatapi serves, for Schemathesis."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import yaml

from tests.openapi import spec_path

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
OPERATIONS = {"/chat/completions": "post", "/completions": "post", "/models": "get"}
REQUEST_SCHEMAS = ("CreateChatCompletionRequest", "CreateCompletionRequest")


@cache
def _raw_spec() -> dict[str, Any]:
    with spec_path().open("rb") as handle:
        return yaml.load(handle, Loader=_Loader)


def _refs(node: Any, found: set[str]) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            found.add(node["$ref"])
        for value in node.values():
            _refs(value, found)
    elif isinstance(node, list):
        for value in node:
            _refs(value, found)


def _narrow_model(node: Any, models: list[str]) -> None:
    """Replace every `model` property with the served names (OpenAI's own list is ~100 ids
    of models this server does not have: most cases would stop at the 404)."""
    if isinstance(node, dict):
        properties = node.get("properties")
        if isinstance(properties, dict) and "model" in properties:
            properties["model"] = {"type": "string", "enum": models}
        for value in node.values():
            _narrow_model(value, models)
    elif isinstance(node, list):
        for value in node:
            _narrow_model(value, models)


def cut_spec(models: list[str]) -> dict[str, Any]:
    """The spec with only OPERATIONS and the components they reference (transitively);
    `model` in the request bodies narrowed to `models`."""
    spec = _raw_spec()
    paths = {}
    for path, method in OPERATIONS.items():
        operation = copy.deepcopy(spec["paths"][path][method])
        operation.pop("x-oaiMeta", None)  # examples in many languages, nothing to test
        paths[path] = {method: operation}
    components: dict[str, dict[str, Any]] = {}
    todo: set[str] = set()
    _refs(paths, todo)
    seen: set[str] = set()
    while todo:
        ref = todo.pop()
        seen.add(ref)
        _, _, kind, name = ref.split("/", 3)  # "#/components/<kind>/<name>"
        node = copy.deepcopy(spec["components"][kind][name])
        components.setdefault(kind, {})[name] = node
        found: set[str] = set()
        _refs(node, found)
        todo |= found - seen
    for name in REQUEST_SCHEMAS:
        _narrow_model(components["schemas"][name], models)
    return {"openapi": spec["openapi"], "info": spec["info"], "servers": spec["servers"],
            "paths": paths, "components": components}
