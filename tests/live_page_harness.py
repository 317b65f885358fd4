"""The live page in a real browser: Debian's Chromium (installed by
``hack/install-browser-deps.sh``) driven by Playwright for Python with that executable; no
browser is downloaded. :func:`page_state` reads what the page shows (the tables a person reads),
so tests compare it with what the clients hold."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from playwright.async_api import Browser, Page, async_playwright

REPO = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO / "hack" / "install-browser-deps.sh"
SCREENSHOT = REPO / "docs" / "img" / "live-page.png"


def chromium_path() -> str:
    """The system Chromium's path (installed from Debian's packages when missing)."""
    result = subprocess.run(
        [str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, f"{INSTALL_SCRIPT} failed: {result.stderr}"
    return result.stdout.strip().splitlines()[-1]


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium (the system one)."""
    async with async_playwright() as playwright:
        instance = await playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=["--no-sandbox"]
        )
        try:
            yield instance
        finally:
            await instance.close()


@asynccontextmanager
async def open_page(
    instance: Browser, url: str, width: int = 1280, height: int = 900
) -> AsyncIterator[Page]:
    """A page at ``url``; console errors and failed requests fail the test."""
    context = await instance.new_context(viewport={"width": width, "height": height})
    page = await context.new_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url}"))
    try:
        await page.goto(url)
        yield page
        assert not problems, f"the page reported: {problems}"
    finally:
        await context.close()


READ_STATE = """
() => {
  const entries = {};
  for (const section of document.querySelectorAll('[data-testid="connectionstats"]')) {
    const topics = {};
    for (const row of section.querySelectorAll('tr[data-testid="topic"]')) {
      const cell = row.querySelector('[data-field="connections"]');
      topics[row.dataset.topic] = Number(cell.textContent);
    }
    const pods = {};
    let node = "";
    for (const row of section.querySelectorAll('tr[data-testid="pod"]')) {
      const field = (name) => row.querySelector('[data-field="' + name + '"]').textContent;
      node = field("node") || node;
      pods[row.dataset.pod] = {
        node: node,
        sockets: Number(field("sockets")),
        ready: field("ready"),
        draining: field("draining"),
        overCapacity: field("overCapacity"),
      };
    }
    entries[section.dataset.key] = {
      connections: Number(section.querySelector('[data-field="connections"]').textContent),
      replicas: section.querySelector('[data-field="replicas"]').textContent,
      topics: topics,
      pods: pods,
      events: Array.from(section.querySelectorAll(".events li")).map((li) => li.textContent),
    };
  }
  const clusterTopics = {};
  for (const row of document.querySelectorAll('tr[data-testid="cluster-topic"]')) {
    const cell = row.querySelector('[data-field="connections"]');
    clusterTopics[row.dataset.topic] = Number(cell.textContent);
  }
  return {
    link: document.getElementById("link-state").textContent,
    connections: document.getElementById("cluster-connections").textContent,
    topics: clusterTopics,
    entries: entries,
    scrollWidth: document.documentElement.scrollWidth,
  };
}
"""


async def page_state(page: Page) -> dict[str, Any]:
    """What the page shows now."""
    state: dict[str, Any] = await page.evaluate(READ_STATE)
    return state
