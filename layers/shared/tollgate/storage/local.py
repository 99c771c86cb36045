"""The local folder backend: files in $TOLLGATE_DATA_DIR/files, reached through URLs signed like S3's.

An upload is a browser form POST to `<files_url>/upload` carrying the fields S3 would want: `key`,
`Content-Type`, a base64 `policy` (its expiry and conditions: the key, the exact content type, the exact size)
and `x-tollgate-signature`, an HMAC-SHA256 of the policy. A download is `<files_url>/<key>?expires=&name=&type=
&signature=`. The local gateway serves both (tollgate_local/local_files.py) by calling `accept_upload` and
`open_download`: an expired or tampered URL is refused with 403, as S3 refuses one.

Each object is the file at its key with a `.meta.json` beside it (content type, ETag), what S3 keeps itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from tollgate.storage.base import ObjectInfo, PresignedPost

SIGNATURE_FIELD = "x-tollgate-signature"
META_SUFFIX = ".meta.json"
_KEY_CONTEXT = b"tollgate local file urls v1"
_SAFE_KEY = re.compile(r"^[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_.-]+)*$")


class UrlRefused(Exception):
    """A local signed URL or form the store will not honour; `status` is what S3 would answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Download:
    data: bytes
    content_type: str
    filename: str


def _signing_key() -> bytes:
    from tollgate.auth.access_tokens import signing_key

    # A key of its own, derived from the deployment's signing key: a URL signature is never a token signature.
    return hmac.new(signing_key().encode(), _KEY_CONTEXT, hashlib.sha256).digest()


def _sign(message: str) -> str:
    return hmac.new(_signing_key(), message.encode(), hashlib.sha256).hexdigest()


def _download_message(key: str, expires: str, name: str, content_type: str) -> str:
    return "\n".join(("GET", key, expires, name, content_type))


class LocalStorage:
    provider = "local"
    bucket = ""

    def __init__(self, root: Path, base_url: str) -> None:
        self.root = root
        self.base_url = base_url.rstrip("/")

    # --- paths ------------------------------------------------------------------------------------------------
    def path_of(self, key: str) -> Path:
        """The file of `key`, refusing any key that could leave the folder."""
        if not _SAFE_KEY.match(key) or any(part in {".", ".."} for part in key.split("/")):
            raise UrlRefused(400, "InvalidKey", "not a key of this store")
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise UrlRefused(400, "InvalidKey", "not a key of this store")
        return path

    # --- the storage interface -------------------------------------------------------------------------------
    def presign_post(
        self, key: str, *, content_type: str, size: int, expires_in: int, now: datetime | None = None
    ) -> PresignedPost:
        expires_at = (now or datetime.now(UTC)) + timedelta(seconds=expires_in)
        policy = {
            "expiration": expires_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "conditions": [{"key": key}, {"Content-Type": content_type}, ["content-length-range", size, size]],
        }
        encoded = base64.b64encode(json.dumps(policy, separators=(",", ":")).encode()).decode()
        fields = {"key": key, "Content-Type": content_type, "policy": encoded, SIGNATURE_FIELD: _sign(encoded)}
        return PresignedPost(url=f"{self.base_url}/upload", fields=fields, expires_at=expires_at)

    def head(self, key: str) -> ObjectInfo | None:
        path = self.path_of(key)
        if not path.is_file():
            return None
        meta = self._meta(path)
        return ObjectInfo(size=path.stat().st_size, content_type=meta.get("content_type"), etag=meta.get("etag"))

    def presign_get(self, key: str, *, expires_in: int, filename: str, content_type: str) -> str:
        expires = str(int(datetime.now(UTC).timestamp()) + expires_in)
        signature = _sign(_download_message(key, expires, filename, content_type))
        query = urlencode({"expires": expires, "name": filename, "type": content_type, "signature": signature})
        return f"{self.base_url}/{key}?{query}"

    def put(self, key: str, data: bytes, *, content_type: str) -> None:
        self._write(key, data, content_type)

    def list_keys(self, prefix: str) -> list[str]:
        root = self.root.resolve()
        folder = self.path_of(prefix.rstrip("/")) if prefix.strip("/") else root
        if not folder.is_dir():
            return []
        # The objects only: not their metadata, nor a write still under way.
        return sorted(
            path.relative_to(root).as_posix()
            for path in folder.rglob("*")
            if path.is_file() and not path.name.endswith((META_SUFFIX, ".partial"))
        )

    def delete(self, keys: Sequence[str]) -> None:
        for key in keys:
            path = self.path_of(key)
            path.unlink(missing_ok=True)
            path.with_name(path.name + META_SUFFIX).unlink(missing_ok=True)

    # --- what the local gateway serves ---------------------------------------------------------------------------
    def accept_upload(self, fields: Mapping[str, str], data: bytes, *, now: datetime | None = None) -> str:
        """Store a form upload if its policy is signed by this deployment, unexpired and met; its ETag."""
        encoded = fields.get("policy") or ""
        signature = fields.get(SIGNATURE_FIELD) or ""
        if not encoded or not hmac.compare_digest(signature.encode(), _sign(encoded).encode()):
            raise UrlRefused(403, "SignatureDoesNotMatch", "the policy's signature is not valid")
        try:
            policy: dict[str, Any] = json.loads(base64.b64decode(encoded, validate=True))
            expiration = datetime.strptime(str(policy["expiration"]), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            conditions = list(policy["conditions"])
        except (ValueError, KeyError, TypeError) as exc:  # signed by us, so only a bug lands here
            raise UrlRefused(400, "MalformedPOSTRequest", "the policy is not readable") from exc
        if (now or datetime.now(UTC)) >= expiration:
            raise UrlRefused(403, "AccessDenied", "Invalid according to Policy: Policy expired.")
        for condition in conditions:
            if isinstance(condition, dict):
                for name, wanted in condition.items():
                    if fields.get(name) != wanted:
                        raise UrlRefused(
                            403, "AccessDenied", f"Invalid according to Policy: Policy Condition failed: {name}"
                        )
            elif isinstance(condition, list) and condition[:1] == ["content-length-range"]:
                low, high = int(condition[1]), int(condition[2])
                if len(data) < low:
                    raise UrlRefused(400, "EntityTooSmall", "the file is smaller than the policy allows")
                if len(data) > high:
                    raise UrlRefused(400, "EntityTooLarge", "the file is larger than the policy allows")
        return self._write(fields["key"], data, fields.get("Content-Type"))

    def open_download(self, key: str, query: Mapping[str, str], *, now: datetime | None = None) -> Download:
        """The object a signed download URL names, if the signature holds and it has not expired."""
        expires = query.get("expires") or ""
        name = query.get("name") or ""
        content_type = query.get("type") or ""
        signature = query.get("signature") or ""
        expected = _sign(_download_message(key, expires, name, content_type))
        if not hmac.compare_digest(signature.encode(), expected.encode()):
            raise UrlRefused(403, "SignatureDoesNotMatch", "the URL's signature is not valid")
        moment = (now or datetime.now(UTC)).timestamp()
        if not expires.isdigit() or moment >= int(expires):
            raise UrlRefused(403, "AccessDenied", "Request has expired")
        path = self.path_of(key)
        if not path.is_file():
            raise UrlRefused(404, "NoSuchKey", "The specified key does not exist.")
        return Download(data=path.read_bytes(), content_type=content_type, filename=name)

    def _write(self, key: str, data: bytes, content_type: str | None) -> str:
        """Store `data` at `key` with its metadata; its ETag."""
        path = self.path_of(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest()  # S3's ETag of a single-part upload
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_bytes(data)
        partial.replace(path)  # atomic: a HEAD never sees half a file
        meta = {"content_type": content_type, "etag": etag}
        path.with_name(path.name + META_SUFFIX).write_text(json.dumps(meta), encoding="utf-8")
        return etag

    def _meta(self, path: Path) -> dict[str, Any]:
        meta_path = path.with_name(path.name + META_SUFFIX)
        try:
            loaded = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return loaded if isinstance(loaded, dict) else {}
