"""manifest.yml: what the bot needs from Slack and, with $FRBOT_SLACK_SPECS, that Slack accepts it."""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import validator_for
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

SPECS_ENV = "FRBOT_SLACK_SPECS"
MANIFEST_PATH = Path(__file__).resolve().parents[1] / "manifest.yml"

COMMAND = "/fr-request"
EVENTS_PATH = "/slack/events"
# Keep in step with the scope comments in manifest.yml: adding a scope needs a reason there.
EXPECTED_BOT_SCOPES = frozenset(
    {"commands", "chat:write", "im:write", "usergroups:read", "metadata.message:read"}
)


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    with MANIFEST_PATH.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    assert isinstance(data, dict)
    return data


# --- what the bot relies on (no specs needed) ---------------------------------------------------------


def test_slash_command_is_fr_request(manifest: dict[str, Any]) -> None:
    commands = manifest["features"]["slash_commands"]
    assert [c["command"] for c in commands] == [COMMAND]
    assert commands[0]["should_escape"] is False


def test_bot_scopes_are_exactly_the_documented_set(manifest: dict[str, Any]) -> None:
    scopes = manifest["oauth_config"]["scopes"]
    bot = scopes["bot"]
    assert len(bot) == len(set(bot)), "duplicate scope"
    assert set(bot) == EXPECTED_BOT_SCOPES
    assert set(scopes) == {"bot"}, "the bot needs no user or optional scopes"


def test_interactivity_and_socket_mode_enabled(manifest: dict[str, Any]) -> None:
    settings = manifest["settings"]
    assert settings["interactivity"]["is_enabled"] is True
    assert settings["socket_mode_enabled"] is True
    assert settings["org_deploy_enabled"] is False
    assert settings["token_rotation_enabled"] is False


def test_app_home_opened_is_subscribed(manifest: dict[str, Any]) -> None:
    assert "app_home_opened" in manifest["settings"]["event_subscriptions"]["bot_events"]
    assert manifest["features"]["app_home"]["home_tab_enabled"] is True


def test_landings_of_the_bots_own_posts_are_subscribed(manifest: dict[str, Any]) -> None:
    """bot/copies.py learns where posts landed from these events; the type must match what posts carry."""
    from bot.copies import METADATA_EVENT_TYPE

    events = manifest["settings"]["event_subscriptions"]
    assert "message_metadata_posted" in events["bot_events"]
    assert {"app_id": "*", "event_type": METADATA_EVENT_TYPE} in events["metadata_subscriptions"]


def test_http_mode_urls_all_point_at_the_events_path(manifest: dict[str, Any]) -> None:
    settings = manifest["settings"]
    urls = {
        manifest["features"]["slash_commands"][0]["url"],
        settings["interactivity"]["request_url"],
        settings["event_subscriptions"]["request_url"],
    }
    assert len(urls) == 1, urls
    (url,) = urls
    assert url.startswith("https://")
    assert url.endswith(EVENTS_PATH)


def test_background_color_is_a_hex_colour(manifest: dict[str, Any]) -> None:
    # The schema spells this constraint "regex", which is not a JSON Schema keyword, so it is not enforced.
    colour = manifest["display_information"]["background_color"]
    assert re.fullmatch(r"#[0-9a-fA-F]{3}([0-9a-fA-F]{3})?", colour), colour


# --- Slack's manifest schema ($FRBOT_SLACK_SPECS/manifest) -------------------------------------------


def _external_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and "://" in ref:
            yield ref
        for value in node.values():
            yield from _external_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _external_refs(value)


@pytest.fixture(scope="module")
def manifest_validator() -> Validator:
    value = os.environ.get(SPECS_ENV)
    if not value:
        pytest.skip(f"{SPECS_ENV} not set: point it at shared/slack-specs to validate manifest.yml")
    folder = Path(value) / "manifest"
    root = json.loads((folder / "manifest.schema.json").read_text(encoding="utf-8"))

    # The root refers to the versioned schemas by public URL; serve them from the local copies. They carry no
    # $id of their own, so register them under the exact URLs the root uses.
    resources: list[tuple[str, Resource[Any]]] = []
    for url in sorted(set(_external_refs(root))):
        local = folder / url.rsplit("/", 1)[-1]
        assert local.is_file(), f"{url} is referenced by manifest.schema.json but {local} is missing"
        contents = json.loads(local.read_text(encoding="utf-8"))
        resources.append((url, Resource.from_contents(contents, default_specification=DRAFT7)))
    assert resources, "manifest.schema.json refers to no versioned schema"

    cls = validator_for(root)  # draft-07, from the root's $schema
    cls.check_schema(root)
    for _, resource in resources:
        cls.check_schema(resource.contents)
    return cls(root, registry=Registry().with_resources(resources), format_checker=cls.FORMAT_CHECKER)


def _all_errors(errors: Iterator[ValidationError]) -> Iterator[ValidationError]:
    """Errors, with the errors of each oneOf/anyOf branch flattened in (the root is a oneOf over versions)."""
    for error in errors:
        yield error
        yield from _all_errors(iter(error.context))


def test_manifest_matches_slack_schema(manifest: dict[str, Any], manifest_validator: Validator) -> None:
    errors = sorted(manifest_validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in _all_errors(iter(errors))
    )


def _drop_command_description(m: dict[str, Any]) -> None:
    del m["features"]["slash_commands"][0]["description"]


def _scopes_as_string(m: dict[str, Any]) -> None:
    m["oauth_config"]["scopes"]["bot"] = ",".join(m["oauth_config"]["scopes"]["bot"])


def _scopes_as_flat_list(m: dict[str, Any]) -> None:
    m["oauth_config"]["scopes"] = list(m["oauth_config"]["scopes"]["bot"])


def _misspelt_setting(m: dict[str, Any]) -> None:
    m["settings"]["socket_mode"] = m["settings"].pop("socket_mode_enabled")


def _command_without_slash(m: dict[str, Any]) -> None:
    m["features"]["slash_commands"][0]["command"] = COMMAND.lstrip("/")


def _short_long_description(m: dict[str, Any]) -> None:
    m["display_information"]["long_description"] = "Requests for facial recognition searches."


@pytest.mark.parametrize(
    ("mutate", "path", "keyword"),
    [
        (_drop_command_description, ["features", "slash_commands", 0], "required"),
        (_scopes_as_string, ["oauth_config", "scopes", "bot"], "type"),
        (_scopes_as_flat_list, ["oauth_config", "scopes"], "type"),
        (_misspelt_setting, ["settings"], "additionalProperties"),
        (_command_without_slash, ["features", "slash_commands", 0, "command"], "pattern"),
        (_short_long_description, ["display_information", "long_description"], "minLength"),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_schema_rejects_broken_manifest(
    manifest: dict[str, Any],
    manifest_validator: Validator,
    mutate: Callable[[dict[str, Any]], None],
    path: list[Any],
    keyword: str,
) -> None:
    broken = copy.deepcopy(manifest)
    mutate(broken)
    errors = _all_errors(manifest_validator.iter_errors(broken))
    found = [(list(e.absolute_path), e.validator) for e in errors]
    assert found, "schema accepted a broken manifest: the positive test would prove nothing"
    # Rejected for the intended reason, not e.g. because a $ref did not resolve or another branch mismatched.
    assert (path, keyword) in found, found
