"""Simulated files endpoints: upload (multipart), list, retrieve, content and delete.

Uploaded bytes live in ``world.file_bytes``; the ``file`` objects in ``world.files`` have the wire
shape of the real API (``status: "processed"`` right after upload, as the recordings show).
Deleting a file does not remove it from vector stores it was added to (their chunks are already
stored), as with the real service.
"""

from __future__ import annotations

import email.parser
import email.policy
from typing import Any

from aiohttp import web

from collector.simulator.core import bad_request, json_response, not_found
from collector.simulator.state import World
from collector.simulator.vector_stores import list_query, page, remember

PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
"""Purposes an upload may declare (the ``*_output`` / ``*-results`` ones are the service's own)."""

_SCOPE = "files"


async def _read_form(request: web.Request) -> tuple[dict[str, str], tuple[str, bytes] | None] | web.Response:
    """The multipart fields and the ``file`` part as (filename, bytes), or the API's 400."""
    if not request.content_type.startswith("multipart/"):
        return bad_request("Invalid request: expected a multipart/form-data body with 'file' and 'purpose'.")
    # Parsed from the whole body with the stdlib: aiohttp's streaming multipart reader emits a
    # DeprecationWarning (unread_data) on some chunk splits, which must not reach the host program.
    body = await request.read()
    head = f"Content-Type: {request.headers.get('Content-Type', '')}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        return bad_request("Invalid request: the multipart/form-data body could not be parsed.")
    fields: dict[str, str] = {}
    upload: tuple[str, bytes] | None = None
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True) or b""
        if not isinstance(name, str) or not isinstance(data, bytes):
            continue
        if name == "file":
            upload = (part.get_filename() or "upload", data)
        else:
            fields[name] = data.decode("utf-8", errors="replace")
    return fields, upload


class _Routes:
    """The HTTP handlers, bound to one world."""

    def __init__(self, world: World) -> None:
        self.w = world

    async def create(self, request: web.Request) -> web.Response:
        form = await _read_form(request)
        if isinstance(form, web.Response):
            return form
        fields, upload = form
        if upload is None:
            return bad_request("Missing required parameter: 'file'.", param="file",
                               code="missing_required_parameter")
        purpose = fields.get("purpose")
        if not purpose:
            return bad_request("Missing required parameter: 'purpose'.", param="purpose",
                               code="missing_required_parameter")
        if purpose not in PURPOSES:
            return bad_request(f"Invalid value for 'purpose': '{purpose}'. Expected one of "
                               f"{', '.join(sorted(PURPOSES))}.", param="purpose", code="invalid_value")
        expires_at: int | None = None
        seconds = fields.get("expires_after[seconds]")
        if seconds is not None and (fields.get("expires_after[anchor]") != "created_at"
                                    or not seconds.isdigit() or not 3600 <= int(seconds) <= 2_592_000):
            return bad_request("Invalid 'expires_after': anchor must be 'created_at' and seconds between "
                               "3600 and 2592000.", param="expires_after", code="invalid_value")
        filename, data = upload
        with self.w.lock:
            file_id = self.w.ids.new("file-", 22)
            created = self.w.clock.stamp()
            if seconds is not None:
                expires_at = created + int(seconds)
            obj: dict[str, Any] = {
                "id": file_id, "object": "file", "bytes": len(data), "created_at": created,
                "expires_at": expires_at, "filename": filename, "purpose": purpose,
                "status": "processed", "status_details": None,
            }
            self.w.files[file_id] = obj
            self.w.file_bytes[file_id] = data
            remember(self.w, _SCOPE, file_id)
        return json_response(obj)

    async def list(self, request: web.Request) -> web.Response:
        lq = list_query(request, max_limit=10_000, default_limit=10_000)
        if isinstance(lq, web.Response):
            return lq
        purpose = request.query.get("purpose")
        with self.w.lock:
            items = [f for f in self.w.files.values() if purpose is None or f["purpose"] == purpose]
            return page(self.w, _SCOPE, items, lq)

    async def retrieve(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        obj = self.w.files.get(file_id)
        return json_response(obj) if obj is not None else not_found("file", file_id)

    async def content(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        if file_id not in self.w.files:
            return not_found("file", file_id)
        return web.Response(body=self.w.file_bytes.get(file_id, b""), content_type="application/octet-stream")

    async def delete(self, request: web.Request) -> web.Response:
        file_id = request.match_info["file_id"]
        with self.w.lock:
            if self.w.files.pop(file_id, None) is None:
                return not_found("file", file_id)
            self.w.file_bytes.pop(file_id, None)
        return json_response({"id": file_id, "object": "file", "deleted": True})


def register(router: web.UrlDispatcher, world: World) -> None:
    """Add the ``/v1/files`` routes."""
    r = _Routes(world)
    router.add_post("/v1/files", r.create)
    router.add_get("/v1/files", r.list)
    router.add_get("/v1/files/{file_id}", r.retrieve)
    router.add_delete("/v1/files/{file_id}", r.delete)
    router.add_get("/v1/files/{file_id}/content", r.content)
