"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol on a pipe
(--remote-debugging-pipe: NUL-separated JSON on fds 3/4), standard library only: load a page,
record every request, console message, exception and log error, check <img> elements and take
a full-page screenshot (:func:`load`); or keep a page open to run scripts in it, hand files to
its <input type=file> and read what it logged (:class:`Session`)."""

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
# a camera for getUserMedia without a camera or a permission prompt (Chromium's own test pattern)
FAKE_CAMERA = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")


@dataclass
class PageLoad:
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, log errors, failed loads
    images: list[dict] = field(default_factory=list)  # {"src", "complete", "naturalWidth"} per <img>
    screenshot: Path | None = None
    warnings: list[str] = field(default_factory=list)  # console warnings alone (also in errors)


class ScriptError(RuntimeError):
    """A script run in the page threw (or its promise rejected)."""


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


class Session:
    """One headless Chromium with one page, open for the ``with`` block."""

    def __init__(self, width: int = 1200, height: int = 900, flags: tuple[str, ...] = ()):
        self.width, self.height, self.flags = width, height, flags

    def __enter__(self) -> "Session":
        exe = chromium()
        if exe is None:
            raise RuntimeError("chromium not found: install Debian's `chromium` package (make test does, as root)")
        # ignore_cleanup_errors: a child process of the killed browser may still be writing its profile
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-profile.", ignore_cleanup_errors=True)
        # chromium talks DevTools on fd 3 (reads) and fd 4 (writes): our stdin/stdout pipes, moved there
        cmd = " ".join([exe, *FLAGS, *self.flags, f"--user-data-dir={self._profile.name}", "about:blank"])
        self.proc = subprocess.Popen(["bash", "-c", f"exec {cmd} 3<&0 4>&1 0</dev/null 1>/dev/null"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            self.pipe = _Pipe(self.proc)
            target = self.pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            self.session = self.pipe.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network", "DOM"):
                self.send(f"{domain}.enable")
            self.send("Emulation.setDeviceMetricsOverride",
                      {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait(timeout=30)
        self._profile.cleanup()

    def send(self, method: str, params: dict | None = None, timeout: float = 30) -> dict:
        return self.pipe.send(method, params, session=self.session, timeout=timeout)

    def open(self, url: str, timeout: float = 30) -> None:
        """Navigate and wait for the load event (what the page records starts here)."""
        self.pipe.events.clear()
        self.send("Page.navigate", {"url": url})
        self.pipe.wait_for("Page.loadEventFired", timeout)

    def evaluate(self, expression: str, timeout: float = 60):
        """The value of ``expression`` (a promise is awaited), as JSON; ScriptError if it threw."""
        reply = self.send("Runtime.evaluate", {"expression": expression, "awaitPromise": True, "returnByValue": True,
                                               "timeout": int(timeout * 1000)}, timeout=timeout + 5)
        if "exceptionDetails" in reply:
            d = reply["exceptionDetails"]
            raise ScriptError(d.get("exception", {}).get("description") or d.get("text"))
        return reply["result"].get("value")

    def set_files(self, selector: str, paths: list[Path]) -> None:
        """Give the <input type=file> at ``selector`` these files, as a person picking them would."""
        root = self.send("DOM.getDocument")["root"]["nodeId"]
        node = self.send("DOM.querySelector", {"nodeId": root, "selector": selector})["nodeId"]
        self.send("DOM.setFileInputFiles", {"nodeId": node, "files": [str(Path(p).resolve()) for p in paths]})

    def screenshot(self, path: Path) -> Path:
        """The whole page, not just the viewport, as a PNG."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        shot = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": {
            "x": 0, "y": 0, "width": self.width, "height": size["height"], "scale": 1}})
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def record(self) -> PageLoad:
        """What happened since :meth:`open`: requests, errors, the <img> elements."""
        images = json.loads(self.evaluate(
            "JSON.stringify([...document.images].map(i => ({src: i.src.slice(0, 40), complete: i.complete,"
            " naturalWidth: i.naturalWidth})))"))
        result = PageLoad(images=images)
        for e in self.pipe.events:
            p, m = e.get("params", {}), e.get("method")
            if m == "Network.requestWillBeSent":
                result.requests.append(p["request"]["url"])
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert", "warning"):
                line = f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p.get('args', [])]}"
                result.errors.append(line)
                if p.get("type") == "warning":
                    result.warnings.append(line)
            elif m == "Runtime.exceptionThrown":
                d = p["exceptionDetails"]
                result.errors.append(f"exception: {d.get('text')} {d.get('exception', {}).get('description', '')}")
            elif m == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                result.errors.append(f"log {p['entry']['level']}: {p['entry']['text']} {p['entry'].get('url', '')}")
            elif m == "Network.loadingFailed":
                result.errors.append(f"load failed: {p.get('errorText')}")
        return result


def load(url: str, screenshot: Path | None = None, width: int = 1200) -> PageLoad:
    """Open ``url`` in a fresh headless Chromium profile and report what happened."""
    with Session(width) as s:
        s.open(url)
        if screenshot is not None:
            s.screenshot(screenshot)
        result = s.record()
        result.screenshot = screenshot
        return result
