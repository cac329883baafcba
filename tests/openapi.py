"""Test helper: validate JSON bodies against OpenAI's published OpenAPI schemas.

The spec is `../shared/openai-openapi.yaml` beside the repository root, or the file named by
the CHATAPI_OPENAPI_SPEC environment variable. It is parsed and prepared once per process.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_ENV = "CHATAPI_OPENAPI_SPEC"
DEFAULT_SPEC = Path(__file__).resolve().parents[1].parent / "shared" / "openai-openapi.yaml"
SPEC_URI = "urn:openai:openapi"
MAX_MESSAGE_CHARS = 300

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def spec_path() -> Path:
    """Where the OpenAPI spec is read from: $CHATAPI_OPENAPI_SPEC, else ../shared."""
    override = os.environ.get(SPEC_ENV)
    return Path(override) if override else DEFAULT_SPEC


def validate(schema_name: str, instance: object) -> None:
    """Raise AssertionError listing every failing path if instance breaks the named schema."""
    errors = sorted(_validator(schema_name).iter_errors(instance), key=lambda e: list(e.path))
    if errors:
        lines = "\n".join(f"  {_describe(error)}" for error in errors)
        raise AssertionError(f"not a valid {schema_name} ({len(errors)} errors):\n{lines}")


def to_json_schema(node: Any) -> Any:
    """Copy an OpenAPI schema tree, rewriting OpenAPI 3.0 keywords into JSON Schema 2020-12."""
    if isinstance(node, list):
        return [to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    schema = {key: to_json_schema(value) for key, value in node.items()}
    _fix_exclusive_bound(schema, "exclusiveMinimum", "minimum")
    _fix_exclusive_bound(schema, "exclusiveMaximum", "maximum")
    if schema.get("nullable") is True:
        # OpenAPI 3.0 `nullable` (still used in parts of the 3.1 spec) means "or null".
        del schema["nullable"]
        return {"anyOf": [schema, {"type": "null"}]}
    return schema


def _fix_exclusive_bound(schema: dict[str, Any], exclusive: str, inclusive: str) -> None:
    """OpenAPI 3.0 writes `minimum: 0, exclusiveMinimum: true`; 2020-12 wants a number."""
    flag = schema.get(exclusive)
    if not isinstance(flag, bool):
        return
    del schema[exclusive]
    if flag and inclusive in schema:
        schema[exclusive] = schema.pop(inclusive)


@cache
def _spec() -> dict[str, Any]:
    path = spec_path()
    if not path.is_file():
        raise FileNotFoundError(f"OpenAI OpenAPI spec not found at {path} (set ${SPEC_ENV})")
    with path.open("rb") as handle:
        raw = yaml.load(handle, Loader=_Loader)
    return to_json_schema(raw)


@cache
def _registry() -> Registry:
    # Unknown OpenAPI keywords (discriminator, x-oaiMeta, example) are annotations to 2020-12.
    resource = Resource(contents=_spec(), specification=DRAFT202012)
    return Registry().with_resource(SPEC_URI, resource)


@cache
def _validator(schema_name: str) -> Draft202012Validator:
    if schema_name not in _spec()["components"]["schemas"]:
        raise KeyError(f"no schema {schema_name!r} in components/schemas of {spec_path()}")
    ref = {"$ref": f"{SPEC_URI}#/components/schemas/{schema_name}"}
    return Draft202012Validator(ref, registry=_registry())


def _describe(error: ValidationError) -> str:
    message = _shorten(error.message)
    if error.context:
        # anyOf/oneOf failures: name the branch that came closest, not just "not valid".
        closest = best_match(_non_null_branches(error.context))
        message += f" (closest: {closest.json_path}: {_shorten(closest.message)})"
    return f"{error.json_path}: {message}"


def _non_null_branches(errors: list[ValidationError]) -> list[ValidationError]:
    # "is not of type 'null'" is true of every nullable field and says nothing useful.
    useful = [e for e in errors if not (e.validator == "type" and e.validator_value == "null")]
    return useful or errors


def _shorten(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 3] + "..."
