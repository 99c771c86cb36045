"""The sender side of mail events: in AWS every function sends through the stack's SES configuration set (the
set whose event destination publishes deliveries, bounces and complaints to the topic MailEventsFunction reads),
and the SES backend names that set in each SendRawEmail request (against moto's SES)."""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from tollgate.config import Settings
from tollgate.mail.backends import SesMailBackend, build_backend
from tollgate_local.template import Template

TEMPLATE = Template(Path(__file__).resolve().parents[2] / "template.yaml")


def _message() -> EmailMessage:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "no-reply@example.com", "ada@example.com", "Hello"
    message.set_content("hi")
    return message


def test_every_function_sends_through_the_configuration_set_whose_events_reach_the_mail_events_function() -> None:
    # Given the template, Then every function names the stack's configuration set
    for function_id, function in TEMPLATE.functions.items():
        assert function.environment.get("SES_CONFIGURATION_SET") == {"Ref": "MailConfigurationSet"}, function_id
    resources = TEMPLATE.resources
    # And the set publishes deliveries, bounces and complaints to the topic that invokes MailEventsFunction
    destination = resources["MailEventDestination"]["Properties"]
    assert destination["ConfigurationSetName"] == {"Ref": "MailConfigurationSet"}
    assert set(destination["EventDestination"]["MatchingEventTypes"]) == {"delivery", "bounce", "complaint"}
    assert destination["EventDestination"]["SnsDestination"] == {"TopicARN": {"Ref": "MailEventsTopic"}}
    function = resources["MailEventsFunction"]["Properties"]
    assert function["Events"]["MailEvents"] == {"Type": "SNS", "Properties": {"Topic": {"Ref": "MailEventsTopic"}}}
    # And the function accepts only that topic's messages
    assert function["Environment"]["Variables"]["SES_EVENTS_TOPIC_ARN"] == {"Ref": "MailEventsTopic"}


def test_the_ses_backend_names_the_configuration_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        ses = boto3.client("ses", region_name="us-east-1")
        ses.verify_email_identity(EmailAddress="no-reply@example.com")
        ses.create_configuration_set(ConfigurationSet={"Name": "tollgate-mail"})
        # Given the backend the settings build in AWS
        backend = build_backend(
            Settings(mail_backend="ses", aws_region="us-east-1", ses_configuration_set="tollgate-mail")
        )
        assert isinstance(backend, SesMailBackend) and backend.configuration_set == "tollgate-mail"
        # When it sends (each request SES receives is read on its way out)
        sent: list[dict[str, object]] = []
        monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)  # a session of this test's own, dropped after it
        boto3.setup_default_session()
        assert boto3.DEFAULT_SESSION is not None
        boto3.DEFAULT_SESSION.events.register(
            "before-call.ses.SendRawEmail", lambda params, **_: sent.append(dict(params["body"]))
        )
        message_id = backend.send(_message(), "log-1")
        # Then SES accepted it, and the request named the configuration set
        assert message_id
        (request,) = sent
        assert request["ConfigurationSetName"] == "tollgate-mail"
