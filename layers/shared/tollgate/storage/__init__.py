"""Object storage behind one interface: S3 in AWS, a local folder with signed URLs on a laptop.

    storage = get_storage()            # chosen by STORAGE_BACKEND (local | s3)
    post = storage.presign_post(key, content_type=..., size=..., expires_in=...)   # the browser uploads to it
    info = storage.head(key)           # ObjectInfo(size, content_type, etag) or None
    url = storage.presign_get(key, expires_in=..., filename=..., content_type=...)
    storage.delete([key, ...])         # missing keys are fine

Services call it; no handler does. Every method but `delete` and `head` is local computation (signing).
"""

from tollgate.storage.base import ObjectInfo, PresignedPost, Storage, build_storage, get_storage

__all__ = ["ObjectInfo", "PresignedPost", "Storage", "build_storage", "get_storage"]
