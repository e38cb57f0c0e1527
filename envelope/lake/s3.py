"""Writing to S3 with a multipart upload we can abort: outputs appear whole or not at all.

pyarrow's S3 output stream always completes its multipart upload when closed, even after an
error (apache/arrow#40502), so through pyarrow alone an atomic write needs a temporary key and
a server-side copy (capped at 5 GiB by CopyObject, and every byte written twice). With
botocore, which pyarrow users of S3 have anyway, the engine writes the final key directly:
parts are uploaded as they fill, CompleteMultipartUpload publishes the object only when the
whole object is written, and any error aborts the upload so nothing appears. Objects smaller
than one part are a single PutObject, atomic by nature.

The botocore client is built from the pyarrow S3FileSystem's own settings (credentials,
region, endpoint, scheme), so one URI configures both. Filesystems that use settings this
translation does not cover (assumed roles, anonymous access, proxies) keep the pyarrow path.
"""

from __future__ import annotations

import threading
from typing import Any

import anyio
import anyio.to_thread
import pyarrow.fs as pafs

from .._botocore_logs import guard_botocore_logs

__all__ = (
    "MAX_PARTS",
    "PART_SIZE",
    "MultipartSink",
    "client_for",
    "object_attributes",
    "put_whole",
    "split_path",
)

#: Bytes per uploaded part (S3 requires >= 5 MiB for all but the last part).
PART_SIZE = 8 << 20

_CLIENTS: dict[tuple[Any, ...], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def client_for(fs: pafs.FileSystem) -> Any | None:
    """A botocore S3 client equivalent to `fs`, or None (not S3, no botocore, or settings
    this translation does not cover)."""
    if not isinstance(fs, pafs.S3FileSystem):
        return None
    try:
        import botocore.config
        import botocore.session
    except ImportError:
        return None
    opts: dict[str, Any] = fs.__reduce__()[1][0]
    proxy = opts.get("proxy_options") or {}
    if opts.get("role_arn") or opts.get("anonymous") or proxy.get("host"):
        return None
    ident = tuple(
        opts.get(k)
        for k in (
            "access_key",
            "secret_key",
            "session_token",
            "region",
            "scheme",
            "endpoint_override",
            "force_virtual_addressing",
            "tls_ca_file_path",
        )
    )
    with _CLIENTS_LOCK:
        client = _CLIENTS.get(ident)
        if client is None:
            guard_botocore_logs()
            endpoint = opts.get("endpoint_override") or ""
            scheme = opts.get("scheme") or "https"
            config = botocore.config.Config(
                retries={"max_attempts": 3, "mode": "standard"},
                s3={
                    "addressing_style": "virtual"
                    if opts.get("force_virtual_addressing")
                    else ("path" if endpoint else "auto")
                },
            )
            client = botocore.session.get_session().create_client(
                "s3",
                region_name=opts.get("region") or None,
                endpoint_url=_endpoint_url(endpoint, scheme),
                aws_access_key_id=opts.get("access_key") or None,
                aws_secret_access_key=opts.get("secret_key") or None,
                aws_session_token=opts.get("session_token") or None,
                verify=opts.get("tls_ca_file_path") or None,
                config=config,
            )
            _CLIENTS[ident] = client
        return client


def _endpoint_url(endpoint: str, scheme: str) -> str | None:
    """The URL of pyarrow's `endpoint_override`, which may name its scheme itself
    (``http://host:port``, as $AWS_ENDPOINT_URL_S3 does) or leave it to `scheme`: the scheme
    was put in front a second time (``https://http://...``) and every job failed."""
    if not endpoint:
        return None
    return endpoint if "://" in endpoint else f"{scheme}://{endpoint}"


def split_path(path: str) -> tuple[str, str]:
    """pyarrow's "bucket/key/..." into (bucket, key)."""
    bucket, _, key = path.lstrip("/").partition("/")
    return bucket, key


def put_whole(client: Any, path: str, data: bytes | bytearray) -> None:
    """One PutObject: the object appears whole or not at all."""
    bucket, key = split_path(path)
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))


#: The HeadObject members a replaced object keeps (as PutObject / CreateMultipartUpload take
#: them), besides its tags.
_KEPT = (
    "ContentType",
    "ContentEncoding",
    "ContentDisposition",
    "ContentLanguage",
    "CacheControl",
    "Metadata",
    "StorageClass",
    "ServerSideEncryption",
    "SSEKMSKeyId",
    "BucketKeyEnabled",
)


def object_attributes(client: Any, path: str) -> dict[str, Any]:
    """What an object rewritten in place must keep (a rewrap writes a new object over it):
    its content headers, user metadata, storage class, server-side encryption settings and
    tags, as PutObject arguments. A rewrap dropped them all (the content type, an owner tag a
    bucket policy or lifecycle rule keys on; review). ACLs and object-lock settings are not
    carried (docs/lake.md)."""
    from urllib.parse import urlencode

    bucket, key = split_path(path)
    head = client.head_object(Bucket=bucket, Key=key)
    kept = {k: head[k] for k in _KEPT if head.get(k) not in (None, "", {})}
    if kept.get("StorageClass") == "STANDARD":
        del kept["StorageClass"]
    tags = client.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", [])
    if tags:
        kept["Tagging"] = urlencode([(t["Key"], t["Value"]) for t in tags])
    return kept


#: S3's limit on the parts of one upload.
MAX_PARTS = 10_000
#: Parts of one size before the size doubles (see `MultipartSink`).
_PARTS_PER_SIZE = 1_000


class MultipartSink:
    """An engine Sink onto one S3 key: parts as they fill, complete on commit, abort on error.

    The size of the object is not known in advance (a stream), and S3 takes at most 10,000
    parts: with 8 MiB parts throughout, an output over 78 GiB failed after uploading all
    10,000 (review). Parts may differ in size, so the part size doubles every 1,000 parts
    (8 MiB, 16 MiB, ... 4 GiB): 8 GiB of output in 8 MiB parts, and room for S3's 5 TiB
    object. Memory: one part buffer besides the engine's own, and a copy of it while a part
    is sent (64 MiB parts from 56 GiB of output, 128 MiB from 120 GiB: docs/lake.md)."""

    def __init__(
        self,
        client: Any,
        path: str,
        *,
        part_size: int = PART_SIZE,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.bucket, self.key = split_path(path)
        self.part_size = part_size
        #: PutObject / CreateMultipartUpload arguments the object is made with (a rewrap's:
        #: `object_attributes` of the object it replaces)
        self.attributes = attributes or {}
        self._buf = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._done = False

    def _upload_part(self, data: bytes) -> None:
        if self._upload_id is None:
            resp = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, **self.attributes
            )
            self._upload_id = str(resp["UploadId"])
        number = len(self._parts) + 1
        resp = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=data,
        )
        self._parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    def _next_part_size(self) -> int:
        return self.part_size << min(len(self._parts) // _PARTS_PER_SIZE, 9)

    async def write(self, data: memoryview) -> None:
        self._buf += data
        while len(self._buf) >= (size := self._next_part_size()):
            part = bytes(self._buf[:size])
            del self._buf[:size]
            await anyio.to_thread.run_sync(self._upload_part, part)

    def _finish(self) -> None:
        if self._upload_id is None:
            self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=bytes(self._buf), **self.attributes
            )
            return
        if self._buf:
            self._upload_part(bytes(self._buf))
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )

    async def commit(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            await anyio.to_thread.run_sync(self._finish)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._abort)
            raise
        finally:
            self._buf = bytearray()

    def _abort(self) -> None:
        if self._upload_id is not None:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self._upload_id
            )
            self._upload_id = None

    async def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buf = bytearray()
        await anyio.to_thread.run_sync(self._abort)
