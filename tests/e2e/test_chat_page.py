"""The web chat page in a real browser: pick a server, connect, chat with a tool call, disconnect.

The service runs the bundled model; the catalogue holds the in-repo MCP server (token
required), mcp-server-time over stdio, and a server nobody listens on.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from llmservice.app import running_service
from llmservice.rest.server import running_shim
from llmservice.service.registry import ProviderRegistry
from llmservice.service.settings import Settings

from ..servers import MCP_TOKEN, demo_mcp_server, free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    with demo_mcp_server() as url:
        yield url


@pytest.fixture(scope="module")
async def base(demo_url: str) -> AsyncIterator[str]:
    config = Settings.model_validate(
        {
            "server": {"grpc_port": 0},
            "llmchat": {
                "allowed_hosts": ["127.0.0.1"],
                "max_steps": 2,
                "probe_timeout_s": 3,
                "stdio_servers": {"time": [sys.executable, "-m", "mcp_server_time"]},
                "servers": {
                    "demo": {"url": demo_url, "description": "In-repo demo tools", "requires_token": True},
                    "time": {"url": "time", "transport": "stdio", "description": "Clock and time zones"},
                    "offline": {"url": f"http://127.0.0.1:{free_port()}/mcp", "description": "Nobody home"},
                },
            },
        }
    )
    async with (
        running_service(config, registry=ProviderRegistry.from_settings(config)) as server,
        running_shim(f"127.0.0.1:{server.port}", "127.0.0.1", 0) as port,
    ):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture
async def page(browser: Any, base: str) -> AsyncIterator[Any]:
    context = await browser.new_context(base_url=base, viewport={"width": 1200, "height": 800})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    yield page
    await context.close()
    assert not errors, errors  # no script errors, nothing fetched that failed (nor from elsewhere)


async def server_item(page: Any, name: str) -> Any:
    item = page.locator(f'#servers li[data-name="{name}"]')
    await item.wait_for()
    return item


async def test_connect_chat_with_a_tool_and_disconnect(page: Any, artifacts: Path, demo_url: str) -> None:
    from playwright.async_api import expect

    await page.goto("/chat")
    demo = await server_item(page, "demo")
    await expect(demo).to_contain_text("token required")
    await expect(demo).to_contain_text("needs a token")  # it answered, and refused a tokenless probe
    await expect(await server_item(page, "time")).to_contain_text("tools")
    await expect(await server_item(page, "offline")).to_contain_text("unreachable")
    await page.screenshot(path=artifacts / "01-servers.png", full_page=True)

    await demo.get_by_role("radio").check()
    await expect(page.get_by_label("Server URL")).to_have_value(demo_url)
    await page.get_by_label("Server token").fill(MCP_TOKEN)
    await page.get_by_label("Provider").select_option("llamacpp")
    await page.get_by_label("Temperature").fill("0")
    await page.get_by_label("Max tokens").fill("48")
    await page.get_by_role("button", name="Connect", exact=True).click()

    status = page.locator("#status")
    await expect(status).to_have_text("Connected: 4 tools", timeout=30_000)
    assert "add" in (await status.get_attribute("title") or "")
    await expect(page.locator("#setup")).not_to_have_attribute("open", "")  # set-up folds away
    await expect(page.get_by_label("Server token")).to_have_value("")  # the secret is not kept
    await page.screenshot(path=artifacts / "02-connected.png", full_page=True)

    box = page.get_by_label("Message")
    await box.fill("first line")
    await box.press("Shift+Enter")
    await box.press_sequentially("second line")
    assert await box.input_value() == "first line\nsecond line"
    assert await page.locator("li.msg.user").count() == 0  # Shift+Enter did not send
    await box.fill("What is 2 plus 3?")
    await watch_answer_text(page)
    await box.press("Enter")

    await expect(page.locator("li.msg.user")).to_have_text("YouWhat is 2 plus 3?")
    answer = page.locator("li.msg.assistant").last
    await expect(answer.locator(".tool summary")).to_contain_text("Tool add: done", timeout=90_000)
    await expect(answer.locator(".body")).not_to_have_class("body typing", timeout=90_000)
    await expect(answer.locator(".tool .result")).to_contain_text("result: 5")
    text = await answer.locator(".body").evaluate(
        "b => [...b.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('')"
    )
    assert text.strip()
    assert await page.evaluate("window.__answerLengths.length") >= 2  # the text grew as tokens came
    await page.screenshot(path=artifacts / "03-answer.png", full_page=True)

    await page.get_by_role("button", name="Disconnect").click()
    await expect(status).to_have_text("Disconnected")
    await expect(page.locator("li.msg.system").last).to_contain_text("Disconnected")
    await expect(page.get_by_label("Message")).to_be_disabled()
    await page.screenshot(path=artifacts / "04-disconnected.png", full_page=True)


async def test_an_unreachable_server_shows_a_clear_error(page: Any, artifacts: Path) -> None:
    from playwright.async_api import expect

    await page.goto("/")
    offline = await server_item(page, "offline")
    await offline.get_by_role("radio").check()
    await page.get_by_role("button", name="Connect", exact=True).click()
    error = page.locator("li.msg.system.error")
    await expect(error).to_contain_text("Could not connect", timeout=30_000)
    await expect(error).to_contain_text("HTTP 503")
    await expect(page.locator("#status")).to_have_text("Disconnected")
    await expect(page.get_by_role("button", name="Connect", exact=True)).to_be_enabled()
    await page.screenshot(path=artifacts / "05-unreachable.png", full_page=True)


async def test_the_page_fits_a_phone_and_every_control_is_labelled(
    browser: Any, base: str, artifacts: Path
) -> None:
    context = await browser.new_context(base_url=base, viewport={"width": 375, "height": 740})
    page = await context.new_page()
    await page.goto("/chat")
    await server_item(page, "demo")
    unlabelled = await page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea, button')]
              .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                           && !e.textContent.trim())
              .map(e => e.id || e.outerHTML)"""
    )
    assert unlabelled == []
    assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.className") == "skip"
    await page.screenshot(path=artifacts / "06-phone.png", full_page=True)
    await context.close()


async def watch_answer_text(page: Any) -> None:
    """Record the length of the answer's text each time it changes, to see it stream."""
    await page.evaluate(
        """() => {
          window.__answerLengths = [];
          new MutationObserver(() => {
            const answers = document.querySelectorAll('li.msg.assistant .body');
            if (!answers.length) return;
            const body = answers[answers.length - 1];
            const text = [...body.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('');
            const last = window.__answerLengths[window.__answerLengths.length - 1];
            if (text.length && text.length !== last) window.__answerLengths.push(text.length);
          }).observe(document.getElementById('log'), {childList: true, subtree: true, characterData: true});
        }"""
    )
