"""Amazon SNS message signatures (the scheme of docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message):
the signing certificate comes from an `sns.<region>.amazonaws.com` HTTPS URL, the string to sign is the message's
fields as `name\\nvalue\\n` in a fixed order, signed RSA PKCS#1 v1.5 with SHA1 (SignatureVersion 1) or SHA256 (2).

    message = verify_sns_message(record["Sns"], topic_arn=..., max_age_seconds=..., now=...)

A Lambda subscription delivers the message as `Records[].Sns` (SigningCertUrl); an HTTPS subscription as the body
(SigningCertURL): both spellings are read. Certificates are fetched once per container and URL.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from tollgate.errors import SnsMessageInvalid, SnsMessageStale

# `sns.<region>.amazonaws.com`: the label must be a region's name (us-east-1, us-gov-west-1, cn-north-1), not any
# label - `sns.s3.amazonaws.com` or `sns.s3-accelerate.amazonaws.com` is an S3 bucket named "sns", anyone's.
CERT_HOST = re.compile(r"sns\.[a-z]{2}(?:-[a-z]+)+-[0-9]{1,2}\.amazonaws\.com(?:\.cn)?")
CERT_FETCH_TIMEOUT_SECONDS = 5
MAX_CERT_BYTES = 16_384
MAX_CACHED_CERTS = 16

# The fields each message type signs, in the order they are signed (a missing Subject is left out).
SIGNED_FIELDS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}

CertFetcher = Callable[[str], bytes]
# PEM certificates by URL: what a container already fetched (tests may place their own signing certificate here).
CERT_CACHE: dict[str, bytes] = {}


def _field(message: Mapping[str, Any], name: str) -> Any:
    """A field by its SNS name, whichever spelling the delivery used (Lambda writes `SigningCertUrl`)."""
    if name in message:
        return message[name]
    for key, value in message.items():
        if key.lower() == name.lower():
            return value
    return None


def check_cert_url(url: str) -> str:
    """`url` if SNS could sign with a certificate there: HTTPS on an `sns.<region>.amazonaws.com` host, a .pem."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not CERT_HOST.fullmatch(parts.hostname or "") or parts.port not in (None, 443):
        raise SnsMessageInvalid("the signing certificate is not on an SNS host", details={"reason": "cert_url"})
    if not parts.path.endswith(".pem") or parts.username or parts.password:
        raise SnsMessageInvalid("the signing certificate URL is not an SNS certificate", details={"reason": "cert_url"})
    return url


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is refused (an HTTPError): the certificate must come from the checked URL itself, not from
    wherever that host points next."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects())


def fetch_cert(url: str) -> bytes:
    """The PEM at `url` (already checked), cached per container."""
    cached = CERT_CACHE.get(url)
    if cached is not None:
        return cached
    with _OPENER.open(url, timeout=CERT_FETCH_TIMEOUT_SECONDS) as response:  # https on an SNS host (checked)
        pem = bytes(response.read(MAX_CERT_BYTES + 1))
    if len(pem) > MAX_CERT_BYTES:
        raise SnsMessageInvalid("the signing certificate is too large", details={"reason": "cert"})
    if len(CERT_CACHE) >= MAX_CACHED_CERTS:
        CERT_CACHE.clear()
    CERT_CACHE[url] = pem
    return pem


def string_to_sign(message: Mapping[str, Any]) -> bytes:
    kind = _field(message, "Type")
    names = SIGNED_FIELDS.get(str(kind))
    if names is None:
        raise SnsMessageInvalid("not an SNS message type", details={"reason": "type"})
    lines: list[str] = []
    for name in names:
        value = _field(message, name)
        if value is None:
            if name == "Subject":
                continue
            raise SnsMessageInvalid(f"the message has no {name}", details={"reason": "fields"})
        lines += [name, str(value)]
    return ("\n".join(lines) + "\n").encode("utf-8")


def verify_sns_message(
    message: Mapping[str, Any],
    *,
    topic_arn: str | None,
    max_age_seconds: int,
    now: datetime,
    fetch: CertFetcher = fetch_cert,
) -> Mapping[str, Any]:
    """`message` if SNS signed it for `topic_arn` (any topic when None) within `max_age_seconds` of `now`.

    Raises `SnsMessageInvalid` (forged, altered, another topic, not SNS's certificate) or `SnsMessageStale`."""
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    version = str(_field(message, "SignatureVersion") or "")
    algorithm: hashes.HashAlgorithm
    if version == "1":
        algorithm = hashes.SHA1()  # noqa: S303 - SNS's SignatureVersion 1 is SHA1withRSA
    elif version == "2":
        algorithm = hashes.SHA256()
    else:
        raise SnsMessageInvalid("unknown SNS signature version", details={"reason": "signature_version"})
    if topic_arn is not None and _field(message, "TopicArn") != topic_arn:
        raise SnsMessageInvalid("the message is not from the mail events topic", details={"reason": "topic"})
    data = string_to_sign(message)
    try:
        signature = base64.b64decode(str(_field(message, "Signature") or ""), validate=True)
    except (binascii.Error, ValueError):
        raise SnsMessageInvalid("the signature is not base64", details={"reason": "signature"}) from None
    url = check_cert_url(str(_field(message, "SigningCertURL") or ""))
    try:
        cert = x509.load_pem_x509_certificate(fetch(url))
    except ValueError:
        raise SnsMessageInvalid("the signing certificate is not a certificate", details={"reason": "cert"}) from None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SnsMessageInvalid("the signing certificate is not valid now", details={"reason": "cert"})
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise SnsMessageInvalid("the signing certificate is not an RSA key", details={"reason": "cert"})
    try:
        key.verify(signature, data, padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        raise SnsMessageInvalid("the SNS signature does not match", details={"reason": "signature"}) from None
    try:
        sent = datetime.fromisoformat(str(_field(message, "Timestamp")).replace("Z", "+00:00"))
    except ValueError:
        raise SnsMessageInvalid("the message's Timestamp is not a time", details={"reason": "timestamp"}) from None
    sent = sent if sent.tzinfo else sent.replace(tzinfo=UTC)
    if now - sent > timedelta(seconds=max_age_seconds):
        raise SnsMessageStale("the SNS message is older than the accepted age", details={"sent": sent.isoformat()})
    return message
