"""A small FastAPI service instrumented with reqtelemetry, exactly as the README shows.

Run it from the repository root: ``uvicorn examples.fastapi_app.app:app``;
``README.md`` next to this file says what it reports and how to turn that off.
"""

from __future__ import annotations

import os

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import StreamingResponse

from reqtelemetry import ASGIMiddleware, Telemetry

telemetry = Telemetry(
    endpoint=os.environ.get("TELEMETRY_ENDPOINT"),  # your collector; unset: nothing is sent
    app_name="example-fastapi",
    app_version="1.4.2",
    exclude_paths=["/healthz"],  # never measured
)
app = FastAPI(title="reqtelemetry FastAPI example")
app.add_middleware(ASGIMiddleware, telemetry=telemetry)  # last: outside the others

ITEMS = {i: {"id": i, "name": f"item {i}"} for i in range(1, 51)}
USERS = {"ada", "grace", "linus"}
telemetry.gauge("items.total", lambda: len(ITEMS))

items = APIRouter(prefix="/items", tags=["items"])
users = APIRouter(prefix="/users", tags=["users"])
api = APIRouter(prefix="/api/v1")


@items.get("/{item_id}")
def get_item(item_id: int) -> dict:
    if item_id not in ITEMS:
        raise HTTPException(status_code=404, detail="no such item")
    return ITEMS[item_id]


@items.get("/{item_id}/reviews/{review_id}")
def get_review(item_id: int, review_id: int) -> dict:
    return {"item": item_id, "review": review_id, "stars": 4}


@items.post("", status_code=201)
def create_item(payload: dict) -> dict:
    telemetry.count("feature.create_item")  # an app-defined usage counter
    return {"id": len(ITEMS) + 1, **payload}


@users.get("/{username}")
def get_user(username: str) -> dict:
    if username not in USERS:
        raise HTTPException(status_code=404, detail="no such user")
    return {"name": username, "items": 3}


@api.get("/search")
def search(q: str = "", limit: int = 10) -> dict:
    hits = [item for item in ITEMS.values() if q.lower() in item["name"]][:limit]
    return {"count": len(hits), "hits": hits}


@api.get("/export")
def export() -> StreamingResponse:
    def rows():  # streamed: measured to the last chunk
        yield b"id,name\n"
        for item in ITEMS.values():
            yield f"{item['id']},{item['name']}\n".encode()

    return StreamingResponse(rows(), media_type="text/csv")


@api.get("/crash")
def crash() -> dict:
    raise RuntimeError("this route always fails")


@app.get("/healthz")
def healthz() -> dict:
    return {"ok": True}


api.include_router(items)
api.include_router(users)
app.include_router(api)
