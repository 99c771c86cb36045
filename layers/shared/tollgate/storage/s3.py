"""S3: presigned POST uploads (the bytes never pass through Lambda), HEAD at completion, presigned GET, batch
delete, and PUT and listing of what the backend writes itself (a large GDPR export). Presigning is local
computation with the function's role credentials; HEAD, PUT, list and delete are calls."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from tollgate.errors import StorageUnavailable
from tollgate.storage.base import ObjectInfo, PresignedPost

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DELETE_BATCH = 1000  # DeleteObjects takes at most 1,000 keys a call
TIMEOUT_SECONDS = 5


def content_disposition(filename: str) -> str:
    """`attachment` with an ASCII fallback name and the exact one in RFC 5987 form."""
    fallback = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in filename) or "file"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


class S3Storage:
    provider = "s3"

    def __init__(self, bucket: str, region: str, client: S3Client | None = None) -> None:
        self.bucket = bucket
        self.region = region
        self._client = client

    @property
    def client(self) -> S3Client:
        if self._client is None:
            import boto3  # the runtime ships boto3; only file routes pay for importing it
            from botocore.config import Config

            config = Config(
                signature_version="s3v4",
                s3={"addressing_style": "virtual"},
                connect_timeout=TIMEOUT_SECONDS,
                read_timeout=TIMEOUT_SECONDS,
                retries={"max_attempts": 3, "mode": "standard"},
            )
            self._client = boto3.client("s3", region_name=self.region, config=config)
        return self._client

    def presign_post(
        self, key: str, *, content_type: str, size: int, expires_in: int, now: datetime | None = None
    ) -> PresignedPost:
        # The policy pins the key, the bucket, the exact content type and the exact size: S3 refuses any other
        # form (boto3 adds the bucket and key conditions itself).
        post: dict[str, Any] = self.client.generate_presigned_post(
            Bucket=self.bucket,
            Key=key,
            Fields={"Content-Type": content_type},
            Conditions=[{"Content-Type": content_type}, ["content-length-range", size, size]],
            ExpiresIn=expires_in,
        )
        started = now or datetime.now(UTC)
        return PresignedPost(
            url=str(post["url"]),
            fields={str(k): str(v) for k, v in post["fields"].items()},
            expires_at=started + timedelta(seconds=expires_in),
        )

    def head(self, key: str) -> ObjectInfo | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            found = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if status == 404 or exc.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise StorageUnavailable("the file store refused to describe the object") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable("the file store cannot be reached") from exc
        etag = found.get("ETag")
        return ObjectInfo(
            size=int(found["ContentLength"]),
            content_type=found.get("ContentType"),
            etag=etag.strip('"') if etag else None,
        )

    def presign_get(self, key: str, *, expires_in: int, filename: str, content_type: str) -> str:
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.bucket,
                    "Key": key,
                    "ResponseContentDisposition": content_disposition(filename),
                    "ResponseContentType": content_type,
                },
                ExpiresIn=expires_in,
            )
        )

    def put(self, key: str, data: bytes, *, content_type: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            # SSE-S3 named explicitly, as the bucket's default is: the object is encrypted whatever the default.
            self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, ContentType=content_type, ServerSideEncryption="AES256"
            )
        except (ClientError, BotoCoreError) as exc:
            raise StorageUnavailable("the file store refused to store the object") from exc

    def list_keys(self, prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return [item["Key"] for page in pages for item in page.get("Contents") or []]
        except (ClientError, BotoCoreError) as exc:
            raise StorageUnavailable("the file store failed to list objects") from exc

    def delete(self, keys: Sequence[str]) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            try:
                answer = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
                )
            except (ClientError, BotoCoreError) as exc:
                raise StorageUnavailable("the file store failed to delete objects") from exc
            failed = answer.get("Errors") or []
            if failed:
                raise StorageUnavailable(
                    f"the file store kept {len(failed)} of {len(batch)} objects",
                    details={"keys": [e.get("Key") for e in failed[:10]]},
                )
