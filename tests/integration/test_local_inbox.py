"""The local inbox and the pages mailed links open (dev-only pages of the local gateway), in a real browser.

The browser is Debian's chromium, headless (`make browser` installs it); where it is missing the browser tests
skip and say why.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select as io_select
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from email import message_from_bytes
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from sqlalchemy import select

from tests.integration.auth_helpers import PASSWORD, AuthEnv, auth_env  # noqa: F401  (fixture)
from tests.support import api_call, project_gateway
from tollgate.db import UnitOfWork
from tollgate.mail.backends import LocalMailBackend
from tollgate.models import User
from tollgate_local import TEMPLATE_PATH
from tollgate_local.events import HttpRequest
from tollgate_local.gateway import GatewayServer, make_server, serve_in_thread

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
LINK = re.compile(r"(http://127\.0\.0\.1:\d+/_local/verify-email\?token=[^\s\"<]+)")


def browser() -> str | None:
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def dump_dom(url: str, wait_ms: int = 5000) -> str:
    """The page as the browser has it after running its scripts (headless, a fresh profile)."""
    binary = browser()
    if binary is None:
        print("chromium is not installed (`make browser` installs it): skipping the browser test")
        pytest.skip("no chromium on this machine (`make browser` installs Debian's chromium)")
    completed = subprocess.run(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         f"--virtual-time-budget={wait_ms}", "--dump-dom", url],
        capture_output=True, text=True, timeout=90, check=True,
    )  # fmt: skip
    return completed.stdout


def submit_form(url: str, password: str, timeout: float = 60.0) -> str:
    """Open `url` in the browser, type `password` into the page's password field, submit its form, and answer the
    page once the API's answer shows. Driven over the DevTools protocol on a pipe (fds 3 and 4 of the browser),
    so it needs nothing beyond the browser itself."""
    binary = browser()
    if binary is None:
        pytest.skip("no chromium on this machine (`make browser` installs Debian's chromium)")
    to_browser_r, to_browser_w = os.pipe()
    from_browser_r, from_browser_w = os.pipe()

    def wire_pipes() -> None:  # in the child: the protocol's fds are 3 (commands) and 4 (answers)
        # Lifted out of the way first: either pipe end may itself be fd 3 or 4.
        commands = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 100)
        answers = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 100)
        os.dup2(commands, 3)
        os.dup2(answers, 4)

    process = subprocess.Popen(
        [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
         "--remote-debugging-pipe", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(3, 4),
        preexec_fn=wire_pipes,
    )  # fmt: skip
    os.close(to_browser_r)
    os.close(from_browser_w)
    buffered = b""
    deadline = time.monotonic() + timeout
    counter = iter(range(1, 1_000_000))

    def command(method: str, session: str | None = None, **params: object) -> dict[str, Any]:
        nonlocal buffered
        ident = next(counter)
        message: dict[str, object] = {"id": ident, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        os.write(to_browser_w, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in buffered:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the browser did not answer {method}")
                ready, _, _ = io_select.select([from_browser_r], [], [], 1.0)
                if ready:
                    chunk = os.read(from_browser_r, 65536)
                    if not chunk:
                        raise RuntimeError("the browser closed its pipe")
                    buffered += chunk
            raw, buffered = buffered.split(b"\0", 1)
            answer: dict[str, Any] = json.loads(raw)
            if answer.get("id") == ident:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                result: dict[str, Any] = answer["result"]
                return result

    script = (
        "(async () => {"
        " const until = async (check) => { for (let i = 0; i < 400 && !check(); i++)"
        "   await new Promise((done) => setTimeout(done, 50)); };"
        ' await until(() => document.readyState === "complete" && document.getElementById("password"));'
        f' document.getElementById("password").value = {json.dumps(password)};'
        ' document.querySelector("form").requestSubmit();'
        ' await until(() => document.getElementById("result").dataset.status);'
        " return document.documentElement.outerHTML; })()"
    )
    try:
        target = next(t for t in command("Target.getTargets")["targetInfos"] if t["type"] == "page")
        session = command("Target.attachToTarget", targetId=target["targetId"], flatten=True)["sessionId"]
        command("Page.enable", session)
        command("Page.navigate", session, url=url)
        for _ in range(20):  # the first tries may still meet about:blank, or a document being replaced
            try:
                evaluated = command("Runtime.evaluate", session, expression=script, awaitPromise=True,
                                    returnByValue=True)  # fmt: skip
            except RuntimeError:
                time.sleep(0.25)
                continue
            value = evaluated.get("result", {}).get("value")
            if isinstance(value, str) and 'id="password"' in value:
                return value
            time.sleep(0.25)
        raise AssertionError("the page never showed its password form")
    finally:
        os.close(to_browser_w)
        os.close(from_browser_r)
        process.kill()
        process.wait(timeout=30)


@pytest.fixture
def local_server(auth_env: AuthEnv) -> Iterator[tuple[GatewayServer, str]]:  # noqa: F811
    """The local gateway on a free port, with APP_URL left to its local default (the /_local pages)."""
    server = make_server(TEMPLATE_PATH, "127.0.0.1", 0)
    port = server.server_address[1]
    auth_env.monkeypatch.delenv("APP_URL", raising=False)
    auth_env.set(TOLLGATE_PORT=port, MAIL_MIN_INTERVAL_SECONDS=0)
    serve_in_thread(server)
    yield server, f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


def page(path: str, query: str = "") -> tuple[int, str]:
    response = project_gateway().handle(HttpRequest("GET", path, query, [], b"", "127.0.0.1"))
    return response.status, response.body.decode()


def test_a_verification_link_from_the_inbox_verifies_the_account_in_a_browser(
    local_server: tuple[GatewayServer, str],
    auth_env: AuthEnv,  # noqa: F811
) -> None:
    """Given a new account (its mail in the local inbox), when the browser opens the inbox, then the message,
    then the link in it, the page asks for the registration's password; given it, the account is verified, and
    the page says so."""
    _, base = local_server
    email = f"new-{uuid.uuid4().hex[:8]}@example.com"
    assert api_call("POST", "/auth/register", body={"email": email, "password": PASSWORD}).status == 202

    # When the browser opens the inbox, the mail is listed with a link to read it
    inbox = dump_dom(f"{base}/_local/inbox")
    assert email in inbox and "Confirm your email address" in inbox
    message_path = re.search(r'href="(/_local/inbox/[0-9a-f-]{36})"', inbox)
    assert message_path, inbox

    # And the message page shows the mailed link, pointing at the local verify page
    message = dump_dom(base + message_path.group(1))
    link = LINK.search(message)
    assert link, message
    assert link.group(1).startswith(f"{base}/_local/verify-email?token=")

    # Then opening the link alone confirms nothing: the page asks for the password first
    url = link.group(1).replace("&amp;", "&")
    opened = dump_dom(url)
    assert 'type="password"' in opened and 'data-status=""' in opened
    with UnitOfWork() as uow:
        assert uow.session.execute(select(User.email_verified_at).where(User.email == email)).scalar_one() is None
    # And submitting it with the registration's password calls the API, which verifies the address
    result = submit_form(url, PASSWORD)
    assert 'data-status="200"' in result and "verified" in result
    with UnitOfWork() as uow:
        user = uow.session.execute(select(User).where(User.email == email)).scalar_one()
        assert user.email_verified_at is not None


def test_the_eml_file_carries_the_token_as_written(
    db: Callable[[], UnitOfWork],
    auth_env: AuthEnv,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Given a registration, when the token is copied out of the raw .eml file, then it verifies the account
    (the file is 8bit text, not quoted-printable with `=3D` and soft line breaks)."""
    email = f"copy-{uuid.uuid4().hex[:8]}@example.com"
    assert api_call("POST", "/auth/register", body={"email": email, "password": PASSWORD}).status == 202
    raw = next(auth_env.mail_dir.glob("*.eml")).read_bytes()
    assert b"quoted-printable" not in raw.lower()
    found = re.search(rb"token=([A-Za-z0-9_\-%]+)", raw)
    assert found
    token = unquote(found.group(1).decode())
    assert api_call("POST", "/auth/verify-email", body={"token": token, "password": PASSWORD}).status == 200


def test_long_lines_keep_a_transfer_encoding(tmp_path: Path) -> None:
    """Given a text part with a line past RFC 5322's limit, then the file keeps it encoded (still readable)."""
    from email.message import EmailMessage

    message = EmailMessage()
    message["To"] = "a@example.com"
    message["Subject"] = "long"
    message.set_content("x" * 2000 + "\n")
    LocalMailBackend(tmp_path, echo=False).send(message, "long")
    parsed = message_from_bytes((tmp_path / "long.eml").read_bytes())
    assert parsed["Content-Transfer-Encoding"] != "8bit"
    payload = parsed.get_payload(decode=True)
    assert isinstance(payload, bytes) and payload.decode().strip() == "x" * 2000


def test_the_inbox_lists_mail_and_reads_each_message(
    db: Callable[[], UnitOfWork],
    auth_env: AuthEnv,  # noqa: F811
) -> None:
    """Given a reset request, then the inbox lists it, its page shows its body with working links, and the raw
    file is served; ids that are not message ids are refused."""
    email = auth_env.register_verified()
    assert api_call("POST", "/auth/password/forgot", body={"email": email}).status == 202
    status, listing = page("/_local/inbox")
    assert status == 200 and "Reset your password" in listing and email in listing
    ids = re.findall(r'href="/_local/inbox/([0-9a-f-]{36})"', listing)
    assert len(ids) == 2  # the verification and the reset
    bodies = [page(f"/_local/inbox/{i}")[1] for i in ids]
    reset = next(b for b in bodies if "Reset your password" in b)
    assert re.search(r'<a href="http://[^"]+/reset-password\?token=[^"]+">', reset)
    raw_status, raw = page(f"/_local/inbox/{ids[0]}.eml")
    assert raw_status == 200 and "Subject:" in raw
    assert page("/_local/inbox/..%2F..%2Fetc%2Fpasswd")[0] == 404
    assert page("/_local/inbox/not-an-id")[0] == 404


def test_the_reset_page_posts_the_token_and_the_new_password(db: Callable[[], UnitOfWork]) -> None:
    """The reset page is a form whose script calls POST /auth/password/reset with the link's token."""
    status, html = page("/_local/reset-password", "token=abc")
    assert status == 200
    assert '"/auth/password/reset"' in html and 'type="password"' in html and "URLSearchParams" in html


def test_local_pages_answer_only_reads_and_unknown_pages_say_what_they_are(db: Callable[[], UnitOfWork]) -> None:
    status, html = page("/_local/login")
    assert status == 404 and "front end" in html
    response = project_gateway().handle(HttpRequest("POST", "/_local/inbox", "", [], b"", "127.0.0.1"))
    assert response.status == 404  # not a route of the template: the gateway's own answer
    assert page("/_local")[0] == 200


def test_local_app_url_defaults_to_the_local_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    from tollgate.config import Settings

    monkeypatch.delenv("APP_URL", raising=False)
    monkeypatch.setenv("TOLLGATE_PORT", "3123")
    assert Settings(_env_file=None).app_url == "http://127.0.0.1:3123/_local"
    monkeypatch.setenv("APP_URL", "https://app.example.com")
    assert Settings(_env_file=None).app_url == "https://app.example.com"


def test_swagger_ui_renders_offline_with_its_authorize_button(
    local_server: tuple[GatewayServer, str],
) -> None:
    """Given the local server, when a browser opens /docs, then Swagger UI renders the API from the gateway's
    own assets, with the Authorize button the security schemes bring."""
    _, base = local_server
    dom = dump_dom(f"{base}/docs", wait_ms=10000)
    assert "swagger-ui" in dom and "btn authorize" in dom
    assert "/auth/register" in dom
