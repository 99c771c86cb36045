"""Mail backends: where a built message goes. Chosen by MAIL_BACKEND (local | ses)."""

from __future__ import annotations

import sys
from copy import deepcopy
from email.message import EmailMessage
from functools import lru_cache
from pathlib import Path
from typing import Protocol

from tollgate.config import Settings, get_settings

MAX_8BIT_LINE = 900


class MailBackend(Protocol):
    name: str

    def send(self, message: EmailMessage, log_id: str) -> str:
        """Deliver the message; return the provider's message id. Raise on failure."""
        ...


def readable_copy(message: EmailMessage) -> EmailMessage:
    """The message with its text parts in 8bit UTF-8 instead of quoted-printable.

    Quoted-printable folds long lines with `=` and writes `=` itself as `=3D`, so a token or link copied out of
    the file would be wrong; 8bit keeps the text as it was written (fine for a file, unlike SMTP, and SES
    gets the message as built).
    """
    copy = deepcopy(message)
    for part in copy.walk():
        if isinstance(part, EmailMessage) and part.get_content_maintype() == "text" and not part.is_multipart():
            text = part.get_content()
            if any(len(line) > MAX_8BIT_LINE for line in text.splitlines()):
                continue  # RFC 5322 caps a line at 998 octets: such a part keeps its transfer encoding
            subtype = part.get_content_subtype()
            part.set_content(text, subtype=subtype, charset="utf-8", cte="8bit")
    return copy


class LocalMailBackend:
    """Development: print the message and keep it as `<mail_dir>/<log id>.eml` (openable by any mail client)."""

    name = "local"

    def __init__(self, mail_dir: Path, echo: bool = True) -> None:
        self.mail_dir = mail_dir
        self.echo = echo

    def send(self, message: EmailMessage, log_id: str) -> str:
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        path = self.mail_dir / f"{log_id}.eml"
        path.write_bytes(readable_copy(message).as_bytes())
        if self.echo:
            body = message.get_body(preferencelist=("plain",))
            text = body.get_content() if body is not None else ""
            sys.stdout.write(
                f"\n--- mail to {message['To']}: {message['Subject']} ({path}) ---\n{text}\n--- end of mail ---\n"
            )
            sys.stdout.flush()
        return f"local-{log_id}"


class SesMailBackend:
    """Amazon SES (v1 SendRawEmail): the exact MIME message we built is what is delivered."""

    name = "ses"

    def __init__(self, region: str, configuration_set: str | None = None) -> None:
        self.region = region
        self.configuration_set = configuration_set

    def send(self, message: EmailMessage, log_id: str) -> str:
        import boto3  # only the SES backend pays for boto3

        client = boto3.client("ses", region_name=self.region)
        if self.configuration_set:
            response = client.send_raw_email(
                RawMessage={"Data": message.as_bytes()}, ConfigurationSetName=self.configuration_set
            )
        else:
            response = client.send_raw_email(RawMessage={"Data": message.as_bytes()})
        return str(response["MessageId"])


def build_backend(settings: Settings) -> MailBackend:
    if settings.mail_backend == "ses":
        return SesMailBackend(settings.aws_region, settings.ses_configuration_set)
    return LocalMailBackend(settings.mail_dir)


@lru_cache(maxsize=1)
def get_backend() -> MailBackend:
    return build_backend(get_settings())
