"""The playground rendered by a real front end: the executed notebook 10 opened in JupyterLab, in headless
Chromium, and a screenshot of the rendered widget saved under ``runs/smoke/screenshots/``.

The executed copy comes from ``tests/test_notebooks.py`` (SMOKE run, earlier in the same ``make test``), which
stores the widgets' state in the notebook (nbclient's ``store_widget_state``); JupyterLab's widget manager
renders the playground from that state once a kernel is connected. The page opens a copy holding the
playground's section (its heading and the cell with its output): JupyterLab draws only the cells in view.
Chromium is driven over the DevTools protocol (tornado's websocket client, already a dependency of
Jupyter) so the test can wait until the widget is drawn instead of guessing a delay.

Skipped, with the reason, when no Chromium is installed (Debian: ``apt-get install chromium``) or no
executed notebook 10 exists yet.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pixelllm.utils import run_dir

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
#: JupyterLab settings of the test server: no news pop-up over the screenshot
SETTINGS = {"@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false"}}


def _browser() -> str | None:
    return next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout: float) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def playground_copy(executed: Path, out: Path) -> Path:
    """The executed notebook reduced to its playground section (heading + the ``Playground(`` cell with its
    output), the widget state kept."""
    nb = json.loads(executed.read_text())
    code = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code" and "Playground(" in "".join(c["source"])]
    if not code:
        raise ValueError(f"{executed}: no cell builds the Playground")
    i = code[-1]
    keep = [c for c in nb["cells"][max(0, i - 1):i + 1]]
    out.write_text(json.dumps({**nb, "cells": keep}))
    return out


async def _drive(ws_url: str, page_url: str, shot: Path, timeout: float) -> dict:
    """Open ``page_url``, wait until a widget with an image is drawn, screenshot it → what the page shows."""
    from tornado.websocket import websocket_connect

    conn = await websocket_connect(ws_url, max_message_size=64 * 2**20)
    counter = [0]

    async def call(method: str, **params):
        counter[0] += 1
        my = counter[0]
        await conn.write_message(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(await conn.read_message())
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    probe = ("(() => { const w = document.querySelector('.jupyter-widgets.widget-vbox');"
             " const img = w && w.querySelector('img'); const r = w && w.getBoundingClientRect();"
             " return JSON.stringify({widget: !!w, image: !!(img && img.naturalWidth > 0),"
             " buttons: w ? [...w.querySelectorAll('button')].map(b => b.textContent.trim()) : [],"
             " slider: !!(w && w.querySelector('.widget-slider')),"
             " rect: r ? [r.x, r.y, r.width, r.height] : null}); })()")
    await call("Page.enable")
    await call("Emulation.setDeviceMetricsOverride", width=1280, height=2000, deviceScaleFactor=1, mobile=False)
    await call("Page.navigate", url=page_url)
    end, seen = time.time() + timeout, {}
    while time.time() < end:
        res = await call("Runtime.evaluate", expression=probe, returnByValue=True)
        seen = json.loads(res.get("result", {}).get("value") or "{}")
        if seen.get("widget") and seen.get("image"):
            break
        await asyncio.sleep(1.0)
    await asyncio.sleep(1.0)                                  # let the layout settle
    res = await call("Runtime.evaluate", expression=probe, returnByValue=True)
    seen = json.loads(res.get("result", {}).get("value") or "{}")
    params = {"format": "png"}
    if seen.get("rect"):
        x, y, w, h = seen["rect"]
        params["clip"] = {"x": max(0, x - 10), "y": max(0, y - 10), "width": w + 20, "height": h + 20, "scale": 1}
    shot.write_bytes(base64.b64decode((await call("Page.captureScreenshot", **params))["data"]))
    conn.close()
    return seen


def test_playground_renders_in_jupyterlab(tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium installed (Debian: apt-get install chromium); the widget callbacks are tested "
                    "without a browser in test_playground.py")
    executed = run_dir(smoke=True, create=False) / "notebooks" / "10_playground.ipynb"
    if not executed.is_file():
        pytest.skip(f"no executed notebook at {executed}: run tests/test_notebooks.py (make test runs it first)")
    root = tmp_path / "lab"
    root.mkdir()
    playground_copy(executed, root / "10_playground.ipynb")
    settings = tmp_path / "settings"
    for rel, value in SETTINGS.items():
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(value))
    # a notebook's outputs are trusted only when signed: an untrusted widget output shows as text
    env = {**os.environ, "JUPYTER_PLATFORM_DIRS": "1", "JUPYTER_DATA_DIR": str(tmp_path / "jupyter_data")}
    subprocess.run([sys.executable, "-m", "jupyter", "trust", str(root / "10_playground.ipynb")], env=env, check=True,
                   capture_output=True)
    port, token, cdp = _free_port(), "pixelllm-test", _free_port()
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
    chrome = None
    try:
        _wait_http(f"http://127.0.0.1:{port}/api/status?token={token}", 45)
        chrome = subprocess.Popen(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
             f"--remote-debugging-port={cdp}", f"--user-data-dir={tmp_path / 'chrome'}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_http(f"http://127.0.0.1:{cdp}/json/version", 20)
        with urllib.request.urlopen(f"http://127.0.0.1:{cdp}/json/list", timeout=5) as r:
            ws = next(t["webSocketDebuggerUrl"] for t in json.loads(r.read()) if t.get("type") == "page")
        shot = run_dir(smoke=True) / "screenshots" / "10_playground_jupyterlab.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        seen = asyncio.run(_drive(ws, f"http://127.0.0.1:{port}/lab/tree/10_playground.ipynb?token={token}", shot, 40))
    finally:
        for p in (chrome, lab):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    print(f"screenshot: {shot}")
    assert seen.get("widget"), f"the playground widget was not drawn (page state {seen})"
    assert seen.get("image"), "the playground's figure (an Image widget) was not drawn"
    assert {"Caption", "Find", "Describe"} <= set(seen["buttons"]) and seen.get("slider")
    from PIL import Image

    with Image.open(shot) as im:
        assert im.width > 300 and im.height > 300
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50     # a drawn figure, not a blank page
