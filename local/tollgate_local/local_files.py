"""The local file store's signed URLs, served by the local gateway (dev only, never in a Lambda artifact).

- `POST /_local/files/upload`: a multipart/form-data upload shaped like S3's presigned POST (the fields
  POST /files answered, then `file`): 204 when stored; 403 for an expired or tampered policy or a field that
  breaks it; 400 for a size outside its range.
- `GET /_local/files/<key>?expires=&name=&type=&signature=`: the file; 403 when expired or tampered.

The checks live in tollgate.storage.local (the same store the services use); this module only speaks HTTP.
"""

from __future__ import annotations

import json
from email import policy
from email.message import Message
from email.parser import BytesParser
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from tollgate_local.events import HttpRequest, HttpResponse

if TYPE_CHECKING:
    from tollgate.storage.local import LocalStorage

FILES_PREFIX = "/_local/files"
# Browsers post the form from the front end's origin: let them read the answer, as the bucket's CORS rules do.
CORS = [("access-control-allow-origin", "*"), ("access-control-expose-headers", "etag")]


def _answer(status: int, code: str, message: str) -> HttpResponse:
    body = json.dumps({"error": {"code": code, "message": message, "details": None}}).encode()
    return HttpResponse(status, [("content-type", "application/json"), *CORS], body)


def parse_form(content_type: str, body: bytes) -> tuple[dict[str, str], bytes | None]:
    """The text fields of a multipart/form-data body, and the bytes of its `file` part (None if absent)."""
    message = BytesParser(policy=policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode() + body
    )
    fields: dict[str, str] = {}
    data: bytes | None = None
    if not message.is_multipart():
        return fields, data
    for part in message.iter_parts():
        assert isinstance(part, Message)
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str):
            continue
        payload = part.get_payload(decode=True)
        raw = payload if isinstance(payload, bytes) else b""
        if name == "file":
            data = raw
        else:
            fields[name] = raw.decode("utf-8", "replace")
    return fields, data


def _store() -> LocalStorage | None:
    from tollgate.storage import get_storage
    from tollgate.storage.local import LocalStorage

    storage = get_storage()
    return storage if isinstance(storage, LocalStorage) else None


def serve(request: HttpRequest) -> HttpResponse | None:
    """The answer for a local file URL, or None when the request is for something else."""
    from tollgate.storage.local import UrlRefused
    from tollgate.storage.s3 import content_disposition

    path = request.raw_path
    if path != FILES_PREFIX and not path.startswith(FILES_PREFIX + "/"):
        return None
    store = _store()
    if store is None:
        return _answer(404, "not_found", "STORAGE_BACKEND is not local: files are not served here")
    key = path.removeprefix(FILES_PREFIX + "/")
    try:
        if request.method == "OPTIONS":
            return HttpResponse(204, [*CORS, ("access-control-allow-methods", "GET, HEAD, POST")], b"")
        if request.method == "POST" and key == "upload":
            content_type = next((v for k, v in request.headers if k.lower() == "content-type"), "")
            if not content_type.lower().startswith("multipart/form-data"):
                return _answer(400, "MalformedPOSTRequest", "send the upload as multipart/form-data")
            fields, data = parse_form(content_type, request.body)
            if data is None:
                return _answer(400, "MalformedPOSTRequest", "the form has no file field")
            etag = store.accept_upload(fields, data)
            return HttpResponse(204, [*CORS, ("etag", f'"{etag}"')], b"")
        if request.method in {"GET", "HEAD"} and key:
            found = store.open_download(key, dict(parse_qsl(request.raw_query)))
            disposition = content_disposition(found.filename)
            headers = [("content-type", found.content_type), ("content-disposition", disposition), *CORS]
            return HttpResponse(200, headers, found.data)
    except UrlRefused as refused:
        return _answer(refused.status, refused.code, refused.message)
    return _answer(405, "MethodNotAllowed", f"{request.method} is not served here")
