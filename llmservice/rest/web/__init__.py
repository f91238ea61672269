"""The web chat page: static files over the /llmchat API, served at / and /chat.

Plain HTML, CSS and JavaScript with no build step and nothing fetched from elsewhere:
the page talks to the same /llmchat routes any client uses.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"


def mount(app: FastAPI) -> None:
    """Serve the page at / and /chat, its assets under /chat/assets."""
    pages = APIRouter(include_in_schema=False)

    @pages.get("/")
    @pages.get("/chat")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.include_router(pages)
    app.mount("/chat/assets", StaticFiles(directory=STATIC), name="chat-assets")
