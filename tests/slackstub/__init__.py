"""Local Slack stand-ins for tests: a Web API server (SlackStub) and a signed-request sender (SlackDriver).

Typical use (tests/test_slackstub.py has more, including a Bolt app end to end):

@pytest.fixture
def slack() -> Iterator[SlackStub]:
    with SlackStub() as stub:  # contracts from $FRBOT_SLACK_SPECS; without it, no contract checks
        yield stub
    stub.assert_no_violations()  # nothing the bot sent would have been refused by Slack

client = WebClient(token=slack.bot_token, base_url=slack.base_url)  # or slack.client()
driver = SlackDriver("http://127.0.0.1:PORT/slack/events", SIGNING_SECRET, stub=slack)
driver.slash_command("/fr", "new", "U1")
view = slack.wait_for("views.open").response["view"]
driver.view_submission("U1", view, {"reason": {"reason_input": "case 42"}})
"""

from .driver import SlackDriver
from .server import DROP, CallLog, Fault, OpenView, RecordedCall, SlackStub, Violation, default_user
from .signing import sign_request, verify_signature
from .specs import SPECS_ENV, Specs, load_specs, specs_dir_from_env

__all__ = [
    "DROP",
    "SPECS_ENV",
    "CallLog",
    "Fault",
    "OpenView",
    "RecordedCall",
    "SlackDriver",
    "SlackStub",
    "Specs",
    "Violation",
    "default_user",
    "load_specs",
    "sign_request",
    "specs_dir_from_env",
    "verify_signature",
]
