"""Read the Slack contracts in $FRBOT_SLACK_SPECS and check arguments, blocks and views against them.

Everything here is loaded once per specs folder and cached: the stub is created per test, the specs are not.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, ValidationError
from jsonschema.validators import extend
from referencing import Registry, Resource

SPECS_ENV = "FRBOT_SLACK_SPECS"
MESSAGE_BLOCK_LIMIT = 50  # Slack's per-message limit; the Block Kit schema only encodes the 100 of views.

# Arguments documented as "JSON-based ... presented as a URL-encoded string" (or "JSON-encoded string").
JSON_ENCODED_ARGS = frozenset({"blocks", "attachments", "unfurled_attachments", "metadata", "view"})


def specs_dir_from_env() -> Path | None:
    value = os.environ.get(SPECS_ENV)
    return Path(value) if value else None


class ArgumentError(Exception):
    """An argument Slack would refuse; `messages` are Slack-style `response_metadata.messages`."""

    def __init__(self, messages: list[str]) -> None:
        super().__init__("; ".join(messages))
        self.messages = messages


@dataclass(frozen=True)
class MethodSpec:
    name: str
    http_method: str
    json_input_supported: bool
    required: tuple[str, ...]
    properties: dict[str, Any]
    errors: frozenset[str]
    raw: dict[str, Any] = field(repr=False)

    def coerce_args(self, args: dict[str, Any]) -> dict[str, Any]:
        """Args converted to their documented types; raises ArgumentError listing every problem."""
        problems: list[str] = []
        out: dict[str, Any] = {}
        for name, value in args.items():
            prop = self.properties.get(name)
            if prop is None or value is None:
                # Slack ignores arguments it does not know; JSON null means "not given".
                out[name] = value
                continue
            try:
                out[name] = coerce_value(name, value, prop)
            except _TypeMismatch as exc:
                problems.append(f"[ERROR] invalid type for `{name}`: {exc} [json-pointer:/{name}]")
        for name in self.required:
            if name != "token" and out.get(name) in (None, ""):
                problems.append(f"[ERROR] missing required field: {name} [json-pointer:/{name}]")
        if problems:
            raise ArgumentError(problems)
        return out


class _TypeMismatch(Exception):
    pass


_TRUE = {"true", "1"}
_FALSE = {"false", "0", ""}


def coerce_value(name: str, value: Any, prop: dict[str, Any]) -> Any:
    """Coerce one argument against a spec property (type / anyOf / allOf / enum); raise _TypeMismatch."""
    if name in JSON_ENCODED_ARGS:
        # Form bodies carry these as JSON text, JSON bodies (slack_sdk) as real arrays/objects; Slack takes
        # both. The spec's "string" type describes the form encoding, so check the structure elsewhere.
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise _TypeMismatch("expected JSON-encoded text, got text that is not valid JSON") from None
        if isinstance(value, (list, dict)):
            return value
    if "allOf" in prop:
        for sub in prop["allOf"]:
            value = coerce_value(name, value, sub)
    if "anyOf" in prop or "oneOf" in prop:
        reasons = []
        for sub in prop.get("anyOf", prop.get("oneOf")):
            try:
                return coerce_value(name, value, sub)
            except _TypeMismatch as exc:
                reasons.append(str(exc))
        raise _TypeMismatch(" and ".join(dict.fromkeys(reasons)))
    kind = prop.get("type")
    if kind is not None:
        value = _coerce_type(value, kind, prop)
    if "enum" in prop and value not in prop["enum"]:
        raise _TypeMismatch(f"{value!r} is not one of {prop['enum']}")
    return value


def _coerce_type(value: Any, kind: str, prop: dict[str, Any]) -> Any:
    if kind == "string":
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # JSON numbers reach Slack's form decoder as text too.
        raise _TypeMismatch(f"expected string, got {type(value).__name__}")
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise _TypeMismatch(f"expected boolean, got {value!r}")
    if kind in ("integer", "number"):
        if isinstance(value, bool):
            raise _TypeMismatch(f"expected {kind}, got boolean")
        if isinstance(value, int) or (kind == "number" and isinstance(value, float)):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                if kind == "number":
                    try:
                        return float(value)
                    except ValueError:
                        pass
        raise _TypeMismatch(f"expected {kind}, got {value!r}")
    if kind in ("object", "array"):
        py_type = dict if kind == "object" else list
        if isinstance(value, py_type):
            return value
        if isinstance(value, str):
            if prop.get("coerce") or kind == "array":
                try:
                    parsed = json.loads(value)
                except ValueError:
                    parsed = None
                if isinstance(parsed, py_type):
                    return parsed
            if kind == "array":
                # Slack's list arguments (file_ids, users...) are comma-separated text in forms.
                return [part for part in value.split(",") if part]
        raise _TypeMismatch(f"expected {kind}, got {type(value).__name__}")
    if kind == "null":
        if value is None:
            return None
        raise _TypeMismatch(f"expected null, got {type(value).__name__}")
    return value  # A type this stub does not know: do not invent a failure.


def load_method_spec(path: Path) -> MethodSpec:
    raw = json.loads(path.read_text(encoding="utf-8"))
    args = raw.get("args", {})
    return MethodSpec(
        name=path.stem,
        http_method=raw.get("http_method", "POST"),
        json_input_supported=bool(raw.get("json_input_supported")),
        required=tuple(args.get("required", ())),
        properties=args.get("properties", {}),
        errors=frozenset(raw.get("errors", {})),
        raw=raw,
    )


# --- Block Kit ------------------------------------------------------------------------------------------


def _discriminated_validator_class(defs: dict[str, Any]) -> type:
    """Draft 2020-12 validator whose oneOf picks the branch by the instance's `type` when branches are
    distinguished by a `type` const. Same verdict as plain oneOf (at most one branch can match), but ~20x
    faster on blocks (~6x) and the errors come from the branch the author meant, not from all 21."""
    cache: dict[int, tuple[list[Any], dict[str, int] | None]] = {}

    def branch_type(branch: dict[str, Any]) -> Any:
        ref = branch.get("$ref", "")
        if ref.startswith("#/$defs/"):
            branch = defs.get(ref[len("#/$defs/") :], {})
        return branch.get("properties", {}).get("type", {}).get("const")

    def discriminator(one_of: list[Any]) -> dict[str, int] | None:
        hit = cache.get(id(one_of))
        if hit is None or hit[0] is not one_of:
            consts = [branch_type(b) if isinstance(b, dict) else None for b in one_of]
            ok = all(isinstance(c, str) for c in consts) and len(set(consts)) == len(consts)
            hit = (one_of, {c: i for i, c in enumerate(consts)} if ok else None)
            cache[id(one_of)] = hit
        return hit[1]

    def one_of(validator: Any, one_of: list[Any], instance: Any, schema: Any) -> Iterator[ValidationError]:
        mapping = discriminator(one_of)
        if mapping is not None and isinstance(instance, dict) and isinstance(instance.get("type"), str):
            index = mapping.get(instance["type"])
            if index is None:
                yield ValidationError(
                    f"unknown type {instance['type']!r} (expected one of {sorted(mapping)})"
                )
                return
            yield from validator.descend(instance, one_of[index], schema_path=index)
            return
        yield from plain_one_of(validator, one_of, instance, schema)

    plain_one_of = Draft202012Validator.VALIDATORS["oneOf"]
    return extend(Draft202012Validator, {"oneOf": one_of})


def _short_message(error: ValidationError) -> str:
    """jsonschema messages embed the whole instance (a 3000-char text, a full block): keep them readable."""
    v, inst = error.validator, error.instance
    if v in ("maxLength", "minLength") and isinstance(inst, str):
        return f"string length {len(inst)} violates {v} {error.validator_value}"
    if v in ("maxItems", "minItems") and isinstance(inst, list):
        return f"array of {len(inst)} items violates {v} {error.validator_value}"
    if v == "const":
        return f"expected {error.validator_value!r}, got {inst!r}"[:200]
    if v in ("oneOf", "anyOf") and error.context and all(e.validator == "required" for e in error.context):
        # e.g. a section needs `text` or `fields`: say that rather than "not valid under any schema".
        names = sorted({repr(name) for e in error.context for name in e.validator_value})
        return f"one of {', '.join(names)} is required"
    if v in ("oneOf", "anyOf") and error.context:
        best = min(error.context, key=lambda e: len(e.message))
        return f"no variant matches (e.g. {_short_message(best)})"
    message = error.message
    return message if len(message) <= 200 else message[:197] + "..."


def _pointer(error: ValidationError) -> str:
    return "".join(f"/{part}" for part in error.absolute_path)


class BlockKit:
    """Cached validators for message blocks and the two view surfaces."""

    def __init__(self, schema_path: Path) -> None:
        schema = json.loads(schema_path.read_text(encoding="utf-8"))
        cls = _discriminated_validator_class(schema.get("$defs", {}))
        registry: Registry = Registry().with_resource(schema["$id"], Resource.from_contents(schema))
        self._blocks = cls(schema, registry=registry, format_checker=None)
        self._modal = cls(
            {"$ref": f"{schema['$id']}#/$defs/modal_view"}, registry=registry, format_checker=None
        )
        self._home = cls(
            {"$ref": f"{schema['$id']}#/$defs/home_view"}, registry=registry, format_checker=None
        )
        # Bots send the same blocks over and over (same modal per command); caching keeps tests fast.
        self._check = functools.lru_cache(maxsize=2048)(self._check_uncached)

    def message_block_errors(self, blocks: Any, prefix: str = "/blocks") -> list[str]:
        errors = list(self._check("blocks", _canonical(blocks), prefix))
        if isinstance(blocks, list) and len(blocks) > MESSAGE_BLOCK_LIMIT:
            errors.append(
                f"[ERROR] no more than {MESSAGE_BLOCK_LIMIT} items allowed in a message, got {len(blocks)} "
                f"[json-pointer:{prefix}]"
            )
        return errors

    def view_errors(self, view: Any, surface: str, prefix: str = "/view") -> list[str]:
        if surface not in ("modal", "home"):
            raise ValueError(f"unknown view surface {surface!r}")
        return list(self._check(surface, _canonical(view), prefix))

    def _check_uncached(self, kind: str, canonical: str, prefix: str) -> tuple[str, ...]:
        validator = {"blocks": self._blocks, "modal": self._modal, "home": self._home}[kind]
        instance = json.loads(canonical)
        errors = sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path)))
        return tuple(f"[ERROR] {_short_message(e)} [json-pointer:{prefix}{_pointer(e)}]" for e in errors)


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Specs:
    root: Path
    methods: dict[str, MethodSpec]
    block_kit: BlockKit

    def method(self, name: str) -> MethodSpec | None:
        return self.methods.get(name)


@functools.lru_cache(maxsize=8)
def _load_specs_cached(root: str) -> Specs:
    path = Path(root)
    methods_dir = path / "methods"
    schema_path = path / "block-kit" / "slack-block-kit.schema.json"
    if not methods_dir.is_dir() or not schema_path.is_file():
        raise FileNotFoundError(
            f"{path} does not look like the slack-specs folder (needs methods/ and "
            f"block-kit/slack-block-kit.schema.json); check ${SPECS_ENV}"
        )
    methods = {p.stem: load_method_spec(p) for p in sorted(methods_dir.glob("*.json"))}
    return Specs(root=path, methods=methods, block_kit=BlockKit(schema_path))


def load_specs(root: Path) -> Specs:
    return _load_specs_cached(str(Path(root).resolve()))
