"""The policy document's JSON Schema (draft 4, what AppConfig's JSON_SCHEMA validator speaks), from the pydantic model.

AppConfig rejects a version the schema refuses before it can be deployed, so the schema must never be
stricter than parse_policy: it catches plain shape errors (a missing `targets`, an unknown key, a list
where a mapping belongs); parse_policy, run by `vifgate config push` and by every cycle, checks the rest
(patterns, cross-field rules, who the approvers are).

`python -m chalicelib.configschema > infra/config-schema.json` regenerates the committed copy.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from . import config
from .config import Policy

DRAFT4 = "http://json-schema.org/draft-04/schema#"
# botocore's model of AppConfig: a validator's Content is at most this many characters.
VALIDATOR_CONTENT_MAX = 32768

# What each BeforeValidator of the model accepts from JSON, beyond the type it produces.
_STRING_OR_INTEGER = {"type": ["string", "integer"]}
_LAX = {
    config._as_str: _STRING_OR_INTEGER,  # an account id written as a number
    config.parse_duration: _STRING_OR_INTEGER,  # "72h", "PT72H" or a number of seconds
    config._expiry_alert: _STRING_OR_INTEGER,
    config._link_ttl: _STRING_OR_INTEGER,
}
# BeforeValidators that only refuse more than their inner type does: the inner type's schema is right.
_NARROWING = {config._plain_int, config._vlan_range, config._base_url}
# Model validators (mode before) that refuse more than the model does, or move fields within it: the model's schema.
_NARROWING_MODEL_VALIDATORS = {"_a_reference", "_split_targets"}


class _Draft4(GenerateJsonSchema):
    """pydantic's generator, made to accept what pydantic's lax mode accepts, in draft 4 words."""

    def function_before_schema(self, schema: core_schema.BeforeValidatorFunctionSchema) -> JsonSchemaValue:
        function = schema["function"]["function"]
        if (written := schema.get("json_schema_input_schema")) is not None:  # the validator says what it reads
            return self.generate_inner(written)
        if function in _LAX:
            return dict(_LAX[function])
        inner = self.generate_inner(schema["schema"])
        if function in _NARROWING or getattr(function, "__name__", "") in _NARROWING_MODEL_VALIDATORS:
            return inner
        return {}  # a validator this module does not know: accept anything rather than refuse a valid document

    def int_schema(self, schema: core_schema.IntSchema) -> JsonSchemaValue:
        # pydantic reads "120" and 120.0 as 120; bounds (minimum/maximum) apply to numbers only.
        return {**super().int_schema(schema), "type": ["number", "string"]}

    def bool_schema(self, schema: core_schema.BoolSchema) -> JsonSchemaValue:
        # pydantic reads "yes", "off", 1 and 0 as booleans too.
        return {"type": ["boolean", "number", "string"]}

    def timedelta_schema(self, schema: core_schema.TimedeltaSchema) -> JsonSchemaValue:
        return dict(_STRING_OR_INTEGER)


_BOUNDS = {"ge": "minimum", "le": "maximum"}


def _draft4(node: Any) -> Any:
    """pydantic's 2020-12 words in draft 4's: definitions, enum for const, no titles (a smaller validator)."""
    if isinstance(node, list):
        return [_draft4(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title":
            continue
        if key == "$defs":
            out["definitions"] = {name: _draft4(d) for name, d in value.items()}
        elif key == "$ref":
            out["$ref"] = value.replace("#/$defs/", "#/definitions/")
        elif key == "const":
            out["enum"] = [value]
        elif key in _BOUNDS:  # a Field(ge=…) on an Annotated type pydantic wraps comes out under its own name
            out[_BOUNDS[key]] = value
        elif key in ("properties", "definitions"):
            out[key] = {name: _draft4(d) for name, d in value.items()}
        else:
            out[key] = _draft4(value)
    if "$ref" in out and len(out) > 1:
        # Draft 4 ignores a $ref's siblings (default, description): keep only the reference.
        out = {"$ref": out["$ref"]}
    return out


def policy_json_schema() -> dict:
    """The policy document's JSON Schema, draft 4."""
    schema = _draft4(Policy.model_json_schema(mode="validation", schema_generator=_Draft4))
    return {"$schema": DRAFT4, **schema}


def schema_text() -> str:
    """The schema as committed in infra/config-schema.json (sorted, indented, one newline at the end)."""
    return json.dumps(policy_json_schema(), indent=2, sort_keys=True) + "\n"


def compact_text() -> str:
    """The schema as AppConfig's validator Content holds it: no whitespace."""
    return json.dumps(policy_json_schema(), separators=(",", ":"), sort_keys=True)


if __name__ == "__main__":
    sys.stdout.write(schema_text())
