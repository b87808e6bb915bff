"""Plays Slack's side of the conversation: sends signed slash commands, interactions and events to the bot.

Payload shapes follow what Slack sends (https://api.slack.com/interactivity/handling#payloads,
/reference/interaction-payloads/block_actions-payload, /reference/interaction-payloads/views#view_submission,
/interactivity/slash-commands#app_command_handling, /apis/events-api#callback-field).
"""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

from .server import Json, SlackStub, _public, default_user
from .signing import sign_request

ACK_DEADLINE = 3.0  # Slack shows the user an error when the app has not answered within 3 seconds

_SELECT_TYPES = {"static_select", "external_select", "overflow", "radio_buttons"}
_MULTI_SELECT_TYPES = {"multi_static_select", "multi_external_select", "checkboxes"}
_SINGLE_VALUE_KEYS = {
    "users_select": "selected_user",
    "conversations_select": "selected_conversation",
    "channels_select": "selected_channel",
    "datepicker": "selected_date",
    "timepicker": "selected_time",
    "datetimepicker": "selected_date_time",
}
_MULTI_VALUE_KEYS = {
    "multi_users_select": "selected_users",
    "multi_conversations_select": "selected_conversations",
    "multi_channels_select": "selected_channels",
}


def _iter_elements(blocks: list[Json]) -> Iterator[tuple[Json, Json]]:
    """(block, interactive element) pairs, wherever Block Kit lets an element live."""
    for block in blocks or []:
        if not isinstance(block, dict):
            continue
        candidates = [block.get("accessory"), block.get("element"), *(block.get("elements") or [])]
        for element in candidates:
            if isinstance(element, dict) and element.get("action_id"):
                yield block, element


def _find_element(blocks: list[Json], action_id: str) -> tuple[Json | None, Json | None]:
    for block, element in _iter_elements(blocks):
        if element.get("action_id") == action_id:
            return block, element
    return None, None


def _options(element: Json) -> list[Json]:
    options = list(element.get("options") or [])
    for group in element.get("option_groups") or []:
        options.extend(group.get("options") or [])
    return options


def _option(element: Json, value: Any) -> Json:
    for option in _options(element):
        if option.get("value") == value:
            return option
    return {"text": {"type": "plain_text", "text": str(value), "emoji": True}, "value": value}


def element_value(element_type: str, element: Json, value: Any) -> Json:
    """The value part of an action / a state entry, keyed the way Slack keys it for this element type.

    `value` is the natural Python value: option value(s) for selects, user/channel id(s), "YYYY-MM-DD",
    text for inputs. None gives the empty state Slack reports for an untouched input.
    """
    if element_type in _SELECT_TYPES:
        return {"selected_option": None if value is None else _option(element, value)}
    if element_type in _MULTI_SELECT_TYPES:
        values = [] if value is None else ([value] if isinstance(value, str) else list(value))
        return {"selected_options": [_option(element, v) for v in values]}
    if element_type in _SINGLE_VALUE_KEYS:
        return {_SINGLE_VALUE_KEYS[element_type]: value}
    if element_type in _MULTI_VALUE_KEYS:
        values = [] if value is None else ([value] if isinstance(value, str) else list(value))
        return {_MULTI_VALUE_KEYS[element_type]: values}
    if element_type == "number_input":
        return {"value": None if value is None else str(value)}
    return {"value": value}


def _initial(element: Json) -> Any:
    """What Slack reports for an input the user did not touch: its initial value, if it has one."""
    if isinstance(element.get("initial_option"), dict):
        return element["initial_option"].get("value")
    if isinstance(element.get("initial_options"), list):
        return [option.get("value") for option in element["initial_options"]]
    for key in (
        "initial_value",
        "initial_date",
        "initial_user",
        "initial_conversation",
        "initial_channel",
        "initial_time",
        "initial_date_time",
        "initial_users",
        "initial_conversations",
        "initial_channels",
    ):
        if key in element:
            return element[key]
    return None


class SlackDriver:
    """Sends what Slack would send to the bot at `url`, signed with `signing_secret`.

    With a `stub`, trigger_ids and response_urls come from the stub (so views.open and respond() work
    against it), ids/names match the stub's workspace, and view_submission answers are applied to the
    stub's modal stacks. Every method returns (HTTP status, parsed JSON body or text).
    """

    def __init__(
        self,
        url: str,
        signing_secret: str,
        *,
        stub: SlackStub | None = None,
        team_id: str | None = None,
        team_domain: str | None = None,
        api_app_id: str | None = None,
        verification_token: str = "legacy-verification-token",
        timeout: float = 10.0,
    ) -> None:
        self.url = url
        self.signing_secret = signing_secret
        self.stub = stub
        self.team_id = team_id or (stub.team_id if stub else "T0TEST")
        self.team_domain = team_domain or (stub.team_domain if stub else "example")
        self.api_app_id = api_app_id or (stub.app_id if stub else "A0TEST")
        self.verification_token = verification_token  # deprecated by Slack but still sent in payloads
        self.timeout = timeout
        self.last_elapsed: float = 0.0

    # --- transport ---

    def post(
        self,
        body: bytes,
        content_type: str,
        *,
        timestamp: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        headers = {
            "Content-Type": content_type,
            **sign_request(self.signing_secret, body, timestamp),
            **(headers or {}),
        }
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                status, raw, ctype = (
                    response.status,
                    response.read(),
                    response.headers.get("Content-Type", ""),
                )
        except urllib.error.HTTPError as exc:
            status, raw, ctype = exc.code, exc.read(), exc.headers.get("Content-Type", "")
        self.last_elapsed = time.monotonic() - started
        return status, _decode(raw, ctype)

    def post_form(self, fields: dict[str, str], **kwargs: Any) -> tuple[int, Any]:
        return self.post(urlencode(fields).encode("utf-8"), "application/x-www-form-urlencoded", **kwargs)

    def post_payload(self, payload: Json, **kwargs: Any) -> tuple[int, Any]:
        """Interactivity requests are a form with one field, `payload`, holding the JSON."""
        return self.post_form({"payload": json.dumps(payload)}, **kwargs)

    def post_event(self, envelope: Json, **kwargs: Any) -> tuple[int, Any]:
        return self.post(json.dumps(envelope).encode("utf-8"), "application/json", **kwargs)

    # --- building blocks ---

    def _user(self, user_id: str) -> Json:
        profile = self.stub.user_profile(user_id) if self.stub else default_user(user_id, self.team_id)
        return {"id": user_id, "username": profile["name"], "name": profile["name"], "team_id": self.team_id}

    def _trigger(self, user_id: str, trigger_id: str | None) -> str:
        if trigger_id is not None:
            return trigger_id
        if self.stub is not None:
            return self.stub.issue_trigger_id(user_id)
        return f"{secrets.randbelow(10**11)}.{secrets.randbelow(10**10)}.{secrets.token_hex(16)}"

    def _response_url(self, kind: str, **context: Any) -> str:
        if self.stub is not None:
            return self.stub.issue_response_url(kind, **context)
        return f"https://hooks.slack.com/{kind}/{self.team_id}/{secrets.randbelow(10**12)}/{secrets.token_hex(12)}"

    def _team(self) -> Json:
        return {"id": self.team_id, "domain": self.team_domain}

    def _channel_name(self, channel_id: str) -> str:
        if channel_id.startswith("D"):
            return "directmessage"
        if self.stub is not None and "name" in self.stub.channels.get(channel_id, {}):
            return self.stub.channels[channel_id]["name"]
        return f"channel-{channel_id.lower()}"

    def _check_ack(self, what: str) -> None:
        if self.stub is not None and self.last_elapsed > ACK_DEADLINE:
            self.stub.record_violation(
                what, "ack_timeout", f"bot answered after {self.last_elapsed:.2f}s (> 3s)"
            )

    # --- what Slack sends ---

    def slash_command(
        self,
        command: str,
        text: str,
        user_id: str,
        channel_id: str = "C0GENERAL",
        trigger_id: str | None = None,
        *,
        response_url: str | None = None,
    ) -> tuple[int, Any]:
        """POST a slash command exactly as Slack does: form-encoded fields, no JSON."""
        user = self._user(user_id)
        fields = {
            "token": self.verification_token,
            "team_id": self.team_id,
            "team_domain": self.team_domain,
            "channel_id": channel_id,
            "channel_name": self._channel_name(channel_id),
            "user_id": user_id,
            "user_name": user["name"],
            "command": command,
            "text": text,
            "api_app_id": self.api_app_id,
            "is_enterprise_install": "false",
            "response_url": response_url
            or self._response_url("commands", channel_id=channel_id, user_id=user_id),
            "trigger_id": self._trigger(user_id, trigger_id),
        }
        result = self.post_form(fields)
        self._check_ack(f"slash_command {command}")
        return result

    def block_action(
        self,
        user_id: str,
        action_id: str,
        value: Any = None,
        *,
        block_id: str | None = None,
        message: Json | None = None,
        view: Json | None = None,
        channel_id: str | None = None,
        container: Json | None = None,
        trigger_id: str | None = None,
        action_type: str | None = None,
        state_values: Json | None = None,
    ) -> tuple[int, Any]:
        """A block_actions interaction: a click/selection on an element in `message` or in modal `view`.

        The element is looked up by action_id in the message's/view's blocks to fill block_id, its type
        and how the value is reported (button `value`, `selected_option`, ...). Without message or view
        the action comes from an ephemeral message (no `message` in the payload, as with Slack).
        """
        source_blocks = (view or message or {}).get("blocks") or []
        block, element = _find_element(source_blocks, action_id)
        element = element or {}
        kind = action_type or element.get("type", "button")
        action: Json = {
            "action_id": action_id,
            "block_id": block_id or (block or {}).get("block_id") or "actions",
            "type": kind,
            "action_ts": f"{time.time():.6f}",
        }
        if kind == "button":
            action["text"] = element.get("text") or {"type": "plain_text", "text": action_id, "emoji": True}
            if value is not None or "value" in element:
                action["value"] = value if value is not None else element["value"]
            if "style" in element:
                action["style"] = element["style"]
        else:
            action.update(element_value(kind, element, value))
            if "placeholder" in element:
                action["placeholder"] = element["placeholder"]

        payload: Json = {
            "type": "block_actions",
            "user": self._user(user_id),
            "api_app_id": self.api_app_id,
            "token": self.verification_token,
            "trigger_id": self._trigger(user_id, trigger_id),
            "team": self._team(),
            "enterprise": None,
            "is_enterprise_install": False,
        }
        if view is not None:
            full_view = self._full_view(view, state_values or {})
            payload["container"] = container or {"type": "view", "view_id": full_view["id"]}
            payload["view"] = full_view
        else:
            channel = channel_id or (message or {}).get("channel") or "C0GENERAL"
            message_ts = (message or {}).get("ts") or f"{time.time():.6f}"
            payload["container"] = container or {
                "type": "message",
                "message_ts": message_ts,
                "channel_id": channel,
                "is_ephemeral": message is None,
            }
            payload["channel"] = {"id": channel, "name": self._channel_name(channel)}
            if message is not None:
                payload["message"] = _public(message)
            payload["state"] = {"values": self._state(source_blocks, state_values or {})}
            payload["response_url"] = self._response_url(
                "actions", channel_id=channel, user_id=user_id, message_ts=message_ts if message else None
            )
        payload["actions"] = [action]
        result = self.post_payload(payload)
        self._check_ack(f"block_action {action_id}")
        return result

    def view_submission(
        self,
        user_id: str,
        view: Json,
        state_values: Json | None = None,
        *,
        private_metadata: str | None = None,
        callback_id: str | None = None,
        trigger_id: str | None = None,
        response_urls: list[Json] | None = None,
    ) -> tuple[int, Any]:
        """Submit modal `view` (best: the dict the stub returned / holds, so ids and hash line up).

        `state_values` is {block_id: {action_id: value}}; a value that is a dict is taken as Slack's own
        state entry, anything else is converted per element type (see element_value). Input blocks not
        mentioned are reported empty, as Slack does.
        """
        full_view = self._full_view(view, state_values or {})
        if private_metadata is not None:
            full_view["private_metadata"] = private_metadata
        if callback_id is not None:
            full_view["callback_id"] = callback_id
        payload = {
            "type": "view_submission",
            "team": self._team(),
            "user": self._user(user_id),
            "api_app_id": self.api_app_id,
            "token": self.verification_token,
            "trigger_id": self._trigger(user_id, trigger_id),
            "view": full_view,
            "response_urls": response_urls or [],
            "is_enterprise_install": False,
            "enterprise": None,
        }
        status, body = self.post_payload(payload)
        self._check_ack(f"view_submission {full_view.get('callback_id')}")
        if self.stub is not None:
            self.stub.apply_view_response(full_view["id"], status, body)
        return status, body

    def event(self, event: Json, *, event_id: str | None = None, retry_num: int = 0) -> tuple[int, Any]:
        """An Events API event_callback wrapping `event`, e.g. {"type": "app_home_opened", "user": "U1"}.
        A `retry_num` above 0 is a redelivery, with the headers Slack adds to one."""
        now = time.time()
        bot_user = self.stub.bot_user_id if self.stub else "UBOT"
        envelope = {
            "token": self.verification_token,
            "team_id": self.team_id,
            "api_app_id": self.api_app_id,
            "event": {"event_ts": f"{now:.6f}", **event},
            "type": "event_callback",
            "event_id": event_id or f"Ev{secrets.token_hex(5).upper()}",
            "event_time": int(now),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": bot_user,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
            "event_context": f"4-{secrets.token_hex(16)}",
        }
        retry = {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_error"}
        result = self.post_event(envelope, headers=retry if retry_num else None)
        self._check_ack(f"event {event.get('type')}")
        return result

    def deliver(self, event: Json, event_id: str, retry_num: int) -> bool:
        """Deliver an event as Slack's Events API does (a SlackStub `event_sink`): True when the app
        answered 200, False when it did not or could not be reached, so Slack would try again."""
        try:
            status, _ = self.event(event, event_id=event_id, retry_num=retry_num)
        except OSError:
            return False
        return status == 200

    # --- helpers ---

    def _full_view(self, view: Json, state_values: Json) -> Json:
        """The view as it appears in payloads: the stub's current copy when it knows the id."""
        if self.stub is not None and view.get("id") in self.stub.views:
            base = json.loads(json.dumps(self.stub.views[view["id"]].view))
        else:
            base = json.loads(json.dumps(view))
            base.setdefault("id", f"V{secrets.token_hex(5).upper()}")
            base.setdefault("team_id", self.team_id)
            base.setdefault("type", "modal")
            base.setdefault("private_metadata", "")
            base.setdefault("callback_id", "")
            base.setdefault("hash", f"{int(time.time())}.{secrets.token_hex(4)}")
            base.setdefault("root_view_id", base["id"])
            base.setdefault("previous_view_id", None)
            base.setdefault("app_id", self.api_app_id)
            base.setdefault("external_id", "")
        base["state"] = {"values": self._state(base.get("blocks") or [], state_values)}
        return base

    def _state(self, blocks: list[Json], state_values: Json) -> Json:
        values: Json = {}
        # Slack reports every input block, touched or not.
        for block, element in _iter_elements(blocks):
            if block.get("type") == "input" and block.get("block_id"):
                kind = element.get("type", "")
                entry = {"type": kind, **element_value(kind, element, _initial(element))}
                values.setdefault(block["block_id"], {})[element["action_id"]] = entry
        for block_id, actions in state_values.items():
            for action_id, value in actions.items():
                if isinstance(value, dict):
                    entry = value
                else:
                    _, element = _find_element(blocks, action_id)
                    kind = (element or {}).get("type", "plain_text_input")
                    entry = {"type": kind, **element_value(kind, element or {}, value)}
                values.setdefault(block_id, {})[action_id] = entry
        return values


def _decode(raw: bytes, content_type: str) -> Any:
    text = raw.decode("utf-8", errors="replace")
    if not text:
        return ""
    if "json" in content_type or text[:1] in "{[":
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text
