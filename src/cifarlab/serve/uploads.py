"""Read multipart file uploads from a request with limits enforced while the body streams in.

    curl -F file=@cat.jpg http://127.0.0.1:8000/predict

Starlette's form parser spools every file to a temporary file and only then lets the endpoint
look at its size, so a 1 GB upload would be read in full before being refused. Here the body is
fed chunk by chunk to python-multipart's streaming parser and the request is refused (413) the
moment one file passes `max_file_bytes` or the file count passes `max_files`, with nothing
beyond that limit buffered. Files stay in memory (they are bounded by those limits), which also
avoids a thread hop per chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

_MAX_OTHER_FIELD_BYTES = 64 * 1024  # text fields we ignore still may not be huge
_MAX_OTHER_FIELDS = 16
_PART_OVERHEAD = 16 * 1024  # generous per-part allowance for boundaries and headers


class UploadError(Exception):
    """A request whose upload is unusable; `status_code` is 413 or 422."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


@dataclass
class Upload:
    """One uploaded file, fully read (and at most `max_file_bytes` long)."""

    filename: str
    content_type: str | None
    data: bytes = b""


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    content_type: str | None = None
    chunks: list[bytes] = field(default_factory=list)
    size: int = 0


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.3g} MB ({n:,} bytes)"


async def read_uploads(
    request: Request, *, field_name: str, max_files: int, max_file_bytes: int
) -> list[Upload]:
    """The files sent in multipart field `field_name`, in order (1 to `max_files` of them).

    Raises `UploadError` (422) for a wrong content type, a malformed body, a wrong field name
    or no file, and (413) for a file over `max_file_bytes` or more than `max_files` files.
    """
    example = f"curl -F {field_name}=@image.jpg {request.url.path}"
    ctype, params = parse_options_header(request.headers.get("content-type"))
    if ctype != b"multipart/form-data":
        shown = request.headers.get("content-type") or "none"
        raise UploadError(
            422,
            f"expected a multipart/form-data upload with the image in field "
            f"{field_name!r}, got content type {shown!r}; for example: {example}",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadError(422, "the multipart/form-data content type has no boundary parameter")

    length = request.headers.get("content-length")
    limit = max_files * (max_file_bytes + _PART_OVERHEAD) + _MAX_OTHER_FIELDS * (
        _MAX_OTHER_FIELD_BYTES + _PART_OVERHEAD
    )
    if length is not None and length.isdigit() and int(length) > limit:
        # Refused from the header alone: nothing of the body is read.
        raise UploadError(
            413,
            f"the request body is {_mb(int(length))}, more than the {_mb(limit)} this "
            f"endpoint accepts ({max_files} file(s) of at most {_mb(max_file_bytes)}); "
            "send smaller or fewer files",
        )

    uploads: list[Upload] = []
    other_fields = 0
    part = _Part()
    header_name = bytearray()
    header_value = bytearray()
    ended = False

    def on_part_begin() -> None:
        nonlocal part
        part = _Part()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        key = bytes(header_name).lower()
        if key == b"content-disposition":
            _, opts = parse_options_header(bytes(header_value))
            if b"name" in opts:
                part.name = opts[b"name"].decode("utf-8", "replace")
            if b"filename" in opts:
                part.filename = opts[b"filename"].decode("utf-8", "replace")
        elif key == b"content-type":
            part.content_type = bytes(header_value).decode("latin-1")
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        nonlocal other_fields
        if part.name == field_name:
            if len(uploads) >= max_files:
                hint = (
                    "use /predict/batch (field 'files') for several images"
                    if max_files == 1
                    else "split them over several requests"
                )
                raise UploadError(
                    413,
                    f"too many files: at most {max_files} per request in field "
                    f"{field_name!r}; {hint}",
                )
            uploads.append(Upload(filename=part.filename or "", content_type=part.content_type))
        elif part.filename is not None:
            # Refused at once, so that a stream of wrongly named parts cannot pile up.
            raise UploadError(
                422,
                f"unexpected file field {part.name!r}: send the image in the multipart field "
                f"{field_name!r}; for example: {example}",
            )
        else:
            other_fields += 1
            if other_fields > _MAX_OTHER_FIELDS:
                raise UploadError(422, f"too many form fields; send only field {field_name!r}")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part.size += end - start
        if part.name == field_name:
            if part.size > max_file_bytes:
                name = f" {part.filename!r}" if part.filename else ""
                raise UploadError(
                    413,
                    f"file{name} is larger than the limit of {_mb(max_file_bytes)}; "
                    "downscale or compress it (the limit is CIFARLAB_MAX_FILE_BYTES)",
                )
            part.chunks.append(data[start:end])
        elif part.size > _MAX_OTHER_FIELD_BYTES:
            raise UploadError(
                413 if part.filename is None else 422,
                f"unexpected field {part.name!r} is too large; send only field {field_name!r}",
            )

    def on_part_end() -> None:
        if part.name == field_name:
            uploads[-1].data = b"".join(part.chunks)
            part.chunks = []

    def on_end() -> None:
        nonlocal ended
        ended = True

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_end": on_end,
        },
    )
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > limit:
                # Without a Content-Length (chunked upload) this is the only total cap.
                raise UploadError(
                    413,
                    f"the request body passed {_mb(limit)}, more than this endpoint accepts; "
                    "send smaller or fewer files",
                )
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except FormParserError as exc:
        raise UploadError(422, f"the multipart body is malformed ({exc}); {example}") from None

    if not uploads:
        raise UploadError(
            422, f"no file in the multipart field {field_name!r}; for example: {example}"
        )
    if not ended:
        raise UploadError(422, "the multipart body ended early (truncated upload); resend it")
    return uploads


async def read_body(request: Request, *, limit: int, what: str) -> bytes:
    """The whole request body, refused (413) from Content-Length or as soon as it passes `limit`."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise UploadError(
            413, f"the {what} is {_mb(int(length))}, more than the {_mb(limit)} accepted"
        )
    chunks: list[bytes] = []
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            raise UploadError(413, f"the {what} passed {_mb(limit)}, more than accepted")
        chunks.append(chunk)
    return b"".join(chunks)
