"""Object storage behind one interface: S3 in AWS, a local folder with signed URLs on a laptop.

    storage = get_storage()            # chosen by STORAGE_BACKEND (local | s3)
    post = storage.presign_post(key, content_type=..., size=..., expires_in=...)   # the browser uploads to it
    info = storage.head(key)           # ObjectInfo(size, content_type, etag) or None
    url = storage.presign_get(key, expires_in=..., filename=..., content_type=...)
    storage.delete([key, ...])         # missing keys are fine
    storage.put(key, data, content_type=...)   # what the backend writes itself (a large GDPR export)
    storage.list_keys(prefix)                  # and finds again (to erase a person's exports)

Services call it; no handler does. Every method but `delete`, `head`, `put` and
`list_keys` is local computation (signing).
"""

from tollgate.storage.base import ObjectInfo, PresignedPost, Storage, WritableStorage, build_storage, get_storage

__all__ = ["ObjectInfo", "PresignedPost", "Storage", "WritableStorage", "build_storage", "get_storage"]
