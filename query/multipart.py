"""multipart/form-data parsed in memory, bounded, strict: the gateway's image upload form.

Starlette's form parser spools file parts over 1 MB to temporary files and accepts any
number of fields; the upload route needs neither. Its body is already bounded by the
gateway's guard (:mod:`query.guard`), so it is read into memory and parsed here with
python-multipart's streaming parser: at most :data:`MAX_PARTS` parts, each name once,
field values that decode as UTF-8. Nothing touches the disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header

from common.errors import QueryError

MAX_PARTS = 16


@dataclass
class Part:
    name: str
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)

    def text(self) -> str:
        try:
            return self.data.decode("utf-8")
        except UnicodeDecodeError:
            raise QueryError(f"form field {self.name!r} is not UTF-8 text") from None


def parse_form(body: bytes, content_type: str) -> dict[str, Part]:
    """Parts by name; QueryError for anything that is not a well-formed, small form."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise QueryError("the upload must be multipart/form-data with a boundary")
    parts: dict[str, Part] = {}
    current: list[Part] = []
    header = {"name": b"", "value": b"", "disposition": b""}

    def on_part_begin() -> None:
        header["disposition"] = b""

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["name"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        if header["name"].strip().lower() == b"content-disposition":
            header["disposition"] = header["value"]
        header["name"], header["value"] = b"", b""

    def on_headers_finished() -> None:
        _kind, opts = parse_options_header(header["disposition"])
        try:
            name = opts[b"name"].decode("utf-8")
            filename = opts[b"filename"].decode("utf-8", "replace") if b"filename" in opts else None
        except (KeyError, UnicodeDecodeError):
            raise QueryError("every form part needs a Content-Disposition with a UTF-8 name") from None
        if name in parts:
            raise QueryError(f"form field {name[:40]!r} is given twice")
        if len(parts) >= MAX_PARTS:
            raise QueryError(f"the form has more than {MAX_PARTS} parts")
        part = Part(name, filename)
        parts[name] = part
        current[:] = [part]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current[0].data += data[start:end]

    callbacks = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                 "on_header_value": on_header_value, "on_header_end": on_header_end,
                 "on_headers_finished": on_headers_finished, "on_part_data": on_part_data}
    try:
        parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        parser.write(body)
        parser.finalize()
    except QueryError:
        raise
    except Exception as exc:  # python-multipart's own errors on malformed input
        raise QueryError(f"malformed multipart form: {type(exc).__name__}") from None
    return parts
