"""Dev-only pages the local gateway serves beside the template's routes (never part of a Lambda artifact).

- `/openapi.json`, `/docs` and `/docs/assets/*`: the merged OpenAPI document and Swagger UI (from its package).
- `/_local/inbox`: the mail sent so far (`email_logs` and the `.eml` files of the local mail backend), each
  message readable at `/_local/inbox/<id>` with its links working (`/_local/inbox/<id>.eml` is the raw file).
- `/_local/verify-email?token=…` and `/_local/reset-password?token=…`: what locally stands in for the front
  end's pages, so the mailed `{APP_URL}/…` links (APP_URL defaults to these pages locally) call the API and
  show its answer.
"""

from __future__ import annotations

import html
import json
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import TYPE_CHECKING

from tollgate_local.events import HttpRequest, HttpResponse
from tollgate_local.openapi import DOCS_ASSETS_PREFIX, merged_openapi, swagger_asset, swagger_html

if TYPE_CHECKING:
    from tollgate_local.gateway import Gateway

LOCAL_PREFIX = "/_local"
HTML = [("content-type", "text/html; charset=utf-8"), ("cache-control", "no-store")]
INBOX_LIMIT = 200
LINK = re.compile(r"https?://[^\s<>\"']+")
STYLE = """<style>
body{font:15px/1.5 system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#1d2330}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #dde}
pre{white-space:pre-wrap;background:#f6f7f9;padding:1rem;border-radius:6px}
.ok{color:#176f2c}.error{color:#a4161a}.muted{color:#667}nav a{margin-right:1rem}
input,button{font:inherit;padding:.3rem .5rem}
</style>"""


@dataclass(frozen=True)
class InboxEntry:
    id: str
    recipient: str
    subject: str
    type: str
    status: str
    created_at: datetime | None
    eml: Path | None


def _page(title: str, body: str, status: int = 200) -> HttpResponse:
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)} · Tollgate (local)'
        f'</title>{STYLE}</head><body><nav><a href="{LOCAL_PREFIX}/inbox">Inbox</a><a href="/docs">API docs</a>'
        f'<span class="muted">local development only</span></nav><h1>{html.escape(title)}</h1>{body}</body></html>'
    )
    return HttpResponse(status, HTML, document.encode())


def _mail_dir() -> Path:
    from tollgate.config import get_settings

    return get_settings().mail_dir


def inbox_entries(limit: int = INBOX_LIMIT) -> list[InboxEntry]:
    """The newest messages: every `email_logs` row, and any `.eml` file no row names (e.g. a reset database)."""
    from sqlalchemy import select

    from tollgate.db import UnitOfWork
    from tollgate.models.auth import EmailLog

    folder = _mail_dir()
    entries: list[InboxEntry] = []
    seen: set[str] = set()
    try:
        with UnitOfWork() as uow:
            rows = uow.session.execute(select(EmailLog).order_by(EmailLog.created_at.desc()).limit(limit)).scalars()
            for row in rows:
                key = str(row.id)
                seen.add(key)
                eml = folder / f"{key}.eml"
                entries.append(
                    InboxEntry(key, row.recipient, row.subject, row.type, row.status, row.created_at,
                               eml if eml.is_file() else None)
                )  # fmt: skip
    except Exception:
        entries = []
    if folder.is_dir():
        for eml in sorted(folder.glob("*.eml"), key=lambda p: p.stat().st_mtime, reverse=True)[:limit]:
            if eml.stem in seen:
                continue
            message = _read_eml(eml)
            entries.append(
                InboxEntry(eml.stem, str(message["To"] or ""), str(message["Subject"] or ""), "", "file",
                           datetime.fromtimestamp(eml.stat().st_mtime).astimezone(), eml)
            )  # fmt: skip
    entries.sort(key=lambda e: e.created_at.timestamp() if e.created_at else 0.0, reverse=True)
    return entries[:limit]


def _read_eml(path: Path) -> EmailMessage:
    with path.open("rb") as handle:
        message = BytesParser(policy=policy.default).parse(handle)
    assert isinstance(message, EmailMessage)
    return message


def _linkify(text: str) -> str:
    """Escaped text whose URLs are links (mailed links open the local pages)."""
    out: list[str] = []
    last = 0
    for found in LINK.finditer(text):
        out.append(html.escape(text[last : found.start()]))
        url = found.group(0)
        out.append(f'<a href="{html.escape(url)}">{html.escape(url)}</a>')
        last = found.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


def inbox_page() -> HttpResponse:
    entries = inbox_entries()
    if not entries:
        return _page(
            "Inbox", "<p>No mail yet. Register (POST /auth/register) and the verification mail shows here.</p>"
        )
    rows = []
    for e in entries:
        when = e.created_at.strftime("%Y-%m-%d %H:%M:%S %Z") if e.created_at else ""
        subject = html.escape(e.subject)
        link = f'<a href="{LOCAL_PREFIX}/inbox/{e.id}">{subject}</a>' if e.eml else subject
        rows.append(
            f"<tr><td>{html.escape(when)}</td><td>{html.escape(e.recipient)}</td><td>{link}</td>"
            f"<td>{html.escape(e.type)}</td><td>{html.escape(e.status)}</td></tr>"
        )
    table = "<table><tr><th>sent</th><th>to</th><th>subject</th><th>type</th><th>status</th></tr>"
    return _page("Inbox", table + "".join(rows) + "</table>")


def message_page(message_id: str) -> HttpResponse:
    raw = message_id.endswith(".eml")
    key = message_id.removesuffix(".eml")
    try:
        uuid.UUID(key)  # only ids: never a path of the caller's choosing
    except ValueError:
        return _page("No such message", "<p>That is not a message id.</p>", 404)
    path = _mail_dir() / f"{key}.eml"
    if not path.is_file():
        return _page("No such message", f"<p>No file {html.escape(path.name)} in the mail folder.</p>", 404)
    if raw:
        return HttpResponse(200, [("content-type", "message/rfc822")], path.read_bytes())
    message = _read_eml(path)
    part = message.get_body(preferencelist=("plain", "html"))
    text = part.get_content() if isinstance(part, EmailMessage) else ""
    headers = "".join(
        f"<tr><th>{name}</th><td>{html.escape(str(message[name] or ''))}</td></tr>"
        for name in ("From", "To", "Subject", "Date")
    )
    body = (
        f"<table>{headers}</table><pre>{_linkify(text)}</pre>"
        f'<p class="muted"><a href="{LOCAL_PREFIX}/inbox/{key}.eml">raw .eml</a></p>'
    )
    return _page(str(message["Subject"] or "(no subject)"), body)


# The stand-in front-end pages: plain forms whose script calls the API on this same gateway.
_CALL_SCRIPT = """<script>
async function call(path, body) {
  const out = document.getElementById("result");
  out.className = ""; out.textContent = "…";
  try {
    const response = await fetch(path, {method: "POST", headers: {"content-type": "application/json"},
                                        body: JSON.stringify(body)});
    const answer = await response.json();
    out.className = response.ok ? "ok" : "error";
    out.textContent = response.status + " " + JSON.stringify(answer);
    out.dataset.status = String(response.status);
  } catch (error) {
    out.className = "error"; out.textContent = String(error); out.dataset.status = "0";
  }
}
const token = new URLSearchParams(location.search).get("token") || "";
</script>"""


def verify_email_page() -> HttpResponse:
    # The link alone confirms nothing: POST /auth/verify-email also wants the password the registration was made
    # with, so a link mailed for someone else's registration of this address cannot verify it.
    body = (
        "<p>Confirm your address with the password you registered with.</p>"
        '<form id="verify"><label>Password <input id="password" type="password" maxlength="1024" required'
        ' autocomplete="current-password"></label> <button>Confirm</button></form>'
        f'<p id="result" data-status=""></p>{_CALL_SCRIPT}'
        '<script>document.getElementById("verify").addEventListener("submit", (event) => {'
        'event.preventDefault(); call("/auth/verify-email", '
        '{token, password: document.getElementById("password").value});});</script>'
    )
    return _page("Verify your email", body)


def reset_password_page() -> HttpResponse:
    body = (
        '<form id="reset"><label>New password <input id="password" type="password" minlength="8" maxlength="128"'
        ' required autocomplete="new-password"></label> <button>Set password</button></form>'
        f'<p id="result" data-status=""></p>{_CALL_SCRIPT}'
        '<script>document.getElementById("reset").addEventListener("submit", (event) => {'
        'event.preventDefault(); call("/auth/password/reset", '
        '{token, password: document.getElementById("password").value});});</script>'
    )
    return _page("Choose a new password", body)


def index_page() -> HttpResponse:
    body = (
        f'<ul><li><a href="{LOCAL_PREFIX}/inbox">Inbox</a>: the mail sent locally</li>'
        '<li><a href="/docs">API docs</a> (Swagger UI; <a href="/openapi.json">openapi.json</a>)</li>'
        '<li><a href="/health">/health</a></li></ul>'
    )
    return _page("Tollgate local pages", body)


def serve(gateway: Gateway, request: HttpRequest) -> HttpResponse | None:
    """The answer for a dev-only page, or None when the request is for the template's routes."""
    path = request.raw_path
    if request.method not in {"GET", "HEAD"}:
        return None
    if path == "/openapi.json":
        body = json.dumps(merged_openapi(gateway)).encode()
        return HttpResponse(200, [("content-type", "application/json")], body)
    if path in {"/docs", "/docs/"}:
        return HttpResponse(200, HTML, swagger_html().encode())
    if path.startswith(DOCS_ASSETS_PREFIX):
        asset = swagger_asset(path.removeprefix(DOCS_ASSETS_PREFIX))
        if asset is None:
            return HttpResponse(404, [("content-type", "text/plain")], b"not a Swagger UI file")
        content, kind = asset
        return HttpResponse(200, [("content-type", kind), ("cache-control", "max-age=3600")], content)
    if path != LOCAL_PREFIX and not path.startswith(LOCAL_PREFIX + "/"):
        return None
    page = path.removeprefix(LOCAL_PREFIX).strip("/")
    if page == "":
        return index_page()
    if page == "inbox":
        return inbox_page()
    if page.startswith("inbox/"):
        return message_page(page.removeprefix("inbox/"))
    if page == "verify-email":
        return verify_email_page()
    if page == "reset-password":
        return reset_password_page()
    return _page(
        "Not a local page",
        f"<p>{html.escape(path)} is a page of your front end (APP_URL); locally only the inbox, verify-email and "
        "reset-password pages exist.</p>",
        404,
    )
