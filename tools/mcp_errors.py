"""MCP tool arguments checked before the SDK does, so a wrong one gets one sentence, not a pydantic dump.

The SDK answers a bad argument with pydantic's multi-line report (``1 validation error for
generateArguments … input_value=0, input_type=int … https://errors.pydantic.dev/…``): noise to
a model and to its user. ``plain_argument_errors`` is a server middleware that checks a
``tools/call``'s arguments against the tool's own input schema (the one ``tools/list`` shows) and,
for the first argument that does not fit, answers an error result naming the argument and the
range it must be in. Arguments that fit go on to the SDK unchanged, which validates them again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, TextContent

__all__ = ["argument_problem", "plain_argument_errors"]

Schema = Mapping[str, Any]


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def _range(schema: Schema) -> str:
    low = schema.get("minimum", schema.get("exclusiveMinimum"))
    high = schema.get("maximum", schema.get("exclusiveMaximum"))
    if low is not None and high is not None:
        return f" from {_number(low)} to {_number(high)}"
    if low is not None:
        return f" of at least {_number(low)}"
    return "" if high is None else f" of at most {_number(high)}"


def _fits(value: Any, schema: Schema) -> bool:
    kind = schema.get("type")
    if kind == "null":
        return value is None
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        if not isinstance(value, str):
            return False
        return bool(schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)))
    if kind in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if kind == "integer" and not float(value).is_integer():
            return False
        low, high = schema.get("minimum"), schema.get("maximum")
        return (low is None or value >= low) and (high is None or value <= high)
    return True  # a type this checker does not know: the SDK decides


def _wanted(name: str, schema: Schema, value: Any) -> str:
    kind = schema.get("type")
    if kind == "string":
        low, high = schema.get("minLength", 0), schema.get("maxLength")
        size = f" of {low:,} to {high:,} characters" if high is not None else ""
        got = f"{len(value):,} characters" if isinstance(value, str) else f"a {type(value).__name__}"
        return f"'{name}' must be text{size} (got {got})"
    if kind in ("integer", "number"):
        what = "a whole number" if kind == "integer" else "a number"
        shown = repr(value) if not isinstance(value, str) else f"'{value[:40]}'"
        return f"'{name}' must be {what}{_range(schema)} (got {shown})"
    if kind == "boolean":
        return f"'{name}' must be true or false (got {value!r:.40})"
    return f"'{name}' has the wrong type"


def argument_problem(arguments: Mapping[str, Any], schema: Schema) -> str | None:
    """One sentence on the first argument that does not fit ``schema`` (a tool's input schema), or None."""
    properties: Mapping[str, Schema] = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in arguments:
            return f"'{name}' is required; {properties.get(name, {}).get('description', 'give it')}"
    for name, value in arguments.items():
        prop = properties.get(name)
        if prop is None:
            known = ", ".join(sorted(properties))
            return f"'{name}' is not an argument of this tool; its arguments are {known}"
        options = prop.get("anyOf", [prop])
        if any(_fits(value, option) for option in options):
            continue
        described = next((o for o in options if o.get("type") != "null"), prop)
        optional = any(o.get("type") == "null" for o in options) and name not in schema.get("required", [])
        return _wanted(name, described, value) + ("; or leave it out for the default" if optional else "")
    return None


def plain_argument_errors(server: MCPServer) -> Any:
    """A middleware answering a ``tools/call`` with a bad argument by one plain sentence."""
    schemas: dict[str, Schema] = {}

    async def check(ctx: ServerRequestContext[Any, Any], call_next: Any) -> Any:
        params = ctx.params if ctx.method == "tools/call" else None
        if not isinstance(params, Mapping) or not isinstance(params.get("arguments", {}), Mapping):
            return await call_next(ctx)
        if not schemas:  # the tools never change after start-up
            schemas.update({tool.name: tool.input_schema for tool in await server.list_tools()})
        schema = schemas.get(str(params.get("name")))
        problem = None if schema is None else argument_problem(params.get("arguments") or {}, schema)
        if problem is None:
            return await call_next(ctx)
        text = f"Invalid argument for {params.get('name')}: {problem}."
        return CallToolResult(content=[TextContent(type="text", text=text)], is_error=True)

    return check
