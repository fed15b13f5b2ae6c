"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol on a pipe
(--remote-debugging-pipe: NUL-separated JSON on fds 3/4), standard library only: load a page,
record every request, console message, exception and log error, check <img> elements and take
a full-page screenshot."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--remote-debugging-pipe")


@dataclass
class PageLoad:
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, log errors, failed loads
    images: list[dict] = field(default_factory=list)  # {"src", "complete", "naturalWidth"} per <img>
    screenshot: Path | None = None


class _Pipe:
    def __init__(self, proc: subprocess.Popen):
        self.proc, self.next_id, self.buf, self.events = proc, 0, b"", []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self.buf:
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not answer in time")
            chunk = self.proc.stdout.read1(1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium exited: {self.proc.stderr.read().decode(errors='replace')[-1500:]}")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.proc.stdin.write(json.dumps(msg).encode() + b"\0")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events[i]
        while True:
            event = self._read(deadline)
            self.events.append(event)
            if event.get("method") == method:
                return event


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def load(url: str, screenshot: Path | None = None, width: int = 1200) -> PageLoad:
    """Open ``url`` in a fresh headless Chromium profile and report what happened."""
    exe = chromium()
    if exe is None:
        raise RuntimeError("chromium not found: install Debian's `chromium` package (make test does, as root)")
    with tempfile.TemporaryDirectory(prefix="chromium-profile.") as profile:
        # chromium talks DevTools on fd 3 (reads) and fd 4 (writes): our stdin/stdout pipes, moved there
        cmd = " ".join([exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"])
        proc = subprocess.Popen(["bash", "-c", f"exec {cmd} 3<&0 4>&1 0</dev/null 1>/dev/null"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            return _drive(_Pipe(proc), url, screenshot, width)
        finally:
            proc.kill()
            proc.wait(timeout=30)


def _drive(pipe: _Pipe, url: str, screenshot: Path | None, width: int) -> PageLoad:
    target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    s = pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        pipe.send(f"{domain}.enable", session=s)
    pipe.send("Emulation.setDeviceMetricsOverride",
              {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=s)
    pipe.events.clear()
    pipe.send("Page.navigate", {"url": url}, session=s)
    pipe.wait_for("Page.loadEventFired")
    images = json.loads(pipe.send("Runtime.evaluate", {"returnByValue": True, "expression": (
        "JSON.stringify([...document.images].map(i => ({src: i.src.slice(0, 40), complete: i.complete,"
        " naturalWidth: i.naturalWidth})))")}, session=s)["result"]["value"])
    result = PageLoad(images=images)
    if screenshot is not None:
        size = pipe.send("Page.getLayoutMetrics", session=s)["cssContentSize"]
        shot = pipe.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
            "x": 0, "y": 0, "width": width, "height": size["height"], "scale": 1}}, session=s)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        result.screenshot = screenshot
    for e in pipe.events:
        p, m = e.get("params", {}), e.get("method")
        if m == "Network.requestWillBeSent":
            result.requests.append(p["request"]["url"])
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
            result.errors.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
        elif m == "Runtime.exceptionThrown":
            result.errors.append(f"exception: {p['exceptionDetails'].get('text')}")
        elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
            result.errors.append(f"log {p['entry']['level']}: {p['entry']['text']} {p['entry'].get('url', '')}")
        elif m == "Network.loadingFailed":
            result.errors.append(f"load failed: {p.get('errorText')}")
    return result
