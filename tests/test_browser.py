"""The demo in a real browser: Chromium driven by Playwright against the demo
served by uvicorn in a subprocess (temporary database and key file).

One tour, in order: a wrong password, sign-in, TOTP set-up (after the
password) from the key the page shows, sign-out, TOTP sign-in, a recovery
code accepted once and refused at the next sign-in and as the proof for new
recovery codes, new codes after an unused recovery code, revoking another
browser's session, a CSRF refusal, a restart of the server process (the
session and the TOTP secret survive it), turning TOTP off with a code, the
lockout page and the rate limiter's answer. Every page is captured as a
screenshot (some at a phone's 390 px width, where no page may scroll
sideways) into ``AXESS_ARTIFACTS_DIR`` (default ``tests/artifacts/browser``).

Needs Chromium at /usr/bin/chromium (Debian's ``chromium`` package): skipped
without it, failed under ``AXESS_REQUIRE_BACKENDS=1``.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from backend_policy import unavailable

from axess.authn.totp import PERIOD, hotp, time_step

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
DEMO_USER, DEMO_PASSWORD = "demo@example.com", "demo-password"
PHONE = {"width": 390, "height": 844}
PHONE_UA = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Mobile Safari/537.36"
)

pytestmark = pytest.mark.backend("chromium")


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("AXESS_ARTIFACTS_DIR") or ROOT / "tests" / "artifacts" / "browser")
    folder.mkdir(parents=True, exist_ok=True)
    return folder.resolve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class DemoServer:
    """``uvicorn examples.demo:app`` in a subprocess on one port, database and
    key file; :meth:`restart` stops it and starts a new process on the same."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "server.log"
        self.env = {
            **os.environ,
            "AXESS_DEMO_DB": str(tmp / "demo.db"),
            "AXESS_DEMO_KEYS": str(tmp / "demo.keys"),
            "PYTHONUNBUFFERED": "1",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "uvicorn", "examples.demo:app"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*command, "--host", "127.0.0.1", "--port", str(self.port)],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"the demo exited ({self.proc.returncode}):\n{self.log.read_text()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        pytest.fail(f"the demo did not answer within 30 s:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DemoServer]:
    demo = DemoServer(tmp_path)
    demo.start()
    try:
        yield demo
    finally:
        demo.stop()


@pytest.fixture
def browser() -> Iterator[Any]:
    if not CHROMIUM.is_file():
        unavailable("chromium", f"{CHROMIUM} not found (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        unavailable("chromium", f"playwright is not installed ({exc})")
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


class Tour:
    """Screenshots with a running number, and the TOTP steps already used."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.shots = 0
        self.last_step = -1
        for old in folder.glob("*.png"):
            old.unlink()

    def shot(self, page: Any, name: str) -> None:
        self.shots += 1
        page.screenshot(path=str(self.folder / f"{self.shots:02d}-{name}.png"), full_page=True)
        if page.viewport_size["width"] <= PHONE["width"]:
            wide = page.evaluate("document.documentElement.scrollWidth > window.innerWidth")
            assert not wide, f"{name}: the page scrolls sideways at phone width"

    def shot_both(self, page: Any, name: str) -> None:
        """The page at its own width and at a phone's."""
        self.shot(page, name)
        size = page.viewport_size
        page.set_viewport_size(PHONE)
        try:
            self.shot(page, name + "-phone")
        finally:
            page.set_viewport_size(size)

    def code(self, secret: bytes) -> str:
        """A code for the lowest step not submitted yet that the server's ±1
        step window accepts: the previous step first, so three codes fit in
        one 30 s step without waiting (waits for the next step only when it
        must)."""
        step = max(time_step(time.time()) - 1, self.last_step + 1)
        while step > time_step(time.time()) + 1:
            time.sleep(PERIOD - time.time() % PERIOD + 0.05)
        self.last_step = step
        return hotp(secret, step)

    def enter_code(self, page: Any, secret: bytes, button: str, refused: str) -> None:
        """Submit a fresh code; once more with the next step if it was refused
        (the step may have turned between computing and checking it)."""
        for _ in range(2):
            page.fill("input[name=code]", self.code(secret))
            page.click(f"button:has-text('{button}')")
            if refused not in page.content():
                return
        pytest.fail(f"two fresh codes were refused: {page.inner_text('main')[:300]}")


def sign_in(page: Any, url: str, email: str, password: str) -> Any:
    """Fill and submit the sign-in form; the response of the POST."""
    page.goto(url + "/")
    page.fill("input[name=email]", email)
    page.fill("input[name=password]", password)
    with page.expect_response(lambda r: r.url.endswith("/login")) as answer:
        page.click("button:has-text('Sign in')")
    page.wait_for_load_state()
    return answer.value


def second_step(page: Any, code: str) -> None:
    assert "Second step" in page.inner_text("h1")
    page.fill("input[name=code]", code)
    page.click("button:has-text('Verify')")


def test_the_demo_tour_in_chromium(
    browser: Any, server: DemoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = artifacts_dir()
    with capsys.disabled():
        print(f"\nbrowser screenshots: {folder}")
    tour = Tour(folder)
    url = server.url
    desk = browser.new_context(viewport={"width": 1100, "height": 800})
    phone = browser.new_context(viewport=PHONE, user_agent=PHONE_UA, is_mobile=True, has_touch=True)
    a, b = desk.new_page(), phone.new_page()

    # A wrong password: the same answer as for an unknown address.
    b.goto(url + "/")
    tour.shot(b, "sign-in-phone")
    answer = sign_in(a, url, DEMO_USER, "not-the-password")
    assert answer.status == 303
    assert "Invalid credentials" in a.inner_text(".notice")
    tour.shot(a, "wrong-password")

    # Sign-in; two-factor is off.
    sign_in(a, url, DEMO_USER, DEMO_PASSWORD)
    assert "Signed in as demo@example.com" in a.inner_text("main")
    assert "TOTP is off" in a.inner_text("#totp-status")
    tour.shot_both(a, "account")

    # TOTP set-up: the QR code is an inline SVG; the code comes from the key shown.
    assert "asks for your password again" in a.inner_text("#two-factor")
    a.fill("#two-factor input[name=password]", DEMO_PASSWORD)
    a.click("button:has-text('Set up TOTP')")
    assert a.locator(".qr svg").is_visible()
    text = a.inner_text("#totp-secret")
    secret = base64.b32decode(text + "=" * (-len(text) % 8))
    tour.shot_both(a, "totp-setup")
    tour.enter_code(a, secret, "Activate", "Wrong code")
    assert "TOTP is on" in a.inner_text("h1")
    codes = a.locator("#recovery-codes code").all_inner_texts()
    assert len(codes) == 10
    tour.shot_both(a, "recovery-codes")
    a.click("text=Back to your account")
    assert "TOTP is on" in a.inner_text("#totp-status")
    a.click("button:text-is('Log out')")
    assert "Signed out." in a.inner_text(".notice")
    tour.shot(a, "signed-out")

    # TOTP sign-in.
    sign_in(a, url, DEMO_USER, DEMO_PASSWORD)
    assert "Second step" in a.inner_text("h1")
    tour.shot(a, "second-step")
    tour.enter_code(a, secret, "Verify", "That code was not accepted")
    assert "Signed in as" in a.inner_text("main")

    # The phone signs in with a recovery code; the same code is refused next time.
    sign_in(b, url, DEMO_USER, DEMO_PASSWORD)
    tour.shot(b, "second-step-phone")
    second_step(b, codes[0])
    assert "Recovery codes left: 9" in b.inner_text("#totp-status")
    tour.shot(b, "account-phone")

    # A sees both sessions and revokes the phone's.
    a.reload()
    sessions = a.locator(".session")
    assert sessions.count() == 2
    assert "This session" in a.inner_text(".session.current")
    other = a.locator(".session:not(.current)")
    assert "Chrome on Android" in other.inner_text()
    assert re.search(r"Signed in\s+\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", other.inner_text())
    tour.shot_both(a, "sessions")
    other.locator("button:has-text('Revoke')").click()
    assert "That session ended" in a.inner_text(".notice")
    assert a.locator(".session").count() == 1
    b.reload()
    assert "Sign in" in b.inner_text("h1")

    sign_in(b, url, DEMO_USER, DEMO_PASSWORD)
    second_step(b, codes[0])
    assert "Each recovery code works once" in b.inner_text(".notice")
    tour.shot(b, "recovery-code-refused-phone")
    second_step(b, codes[1])
    assert "Recovery codes left: 8" in b.inner_text("#totp-status")

    # Changing an active second factor takes a code of it, not the password;
    # the spent recovery code is refused here too, an unused one is accepted.
    assert "most likely to have leaked" in b.inner_text("#two-factor")
    assert b.locator("#two-factor input[name=password]").count() == 0
    b.fill("#two-factor input[name=code]", codes[0])
    b.click("button:has-text('New recovery codes')")
    assert "That code was not accepted, so nothing changed" in b.inner_text(".notice")
    assert "Recovery codes left: 8" in b.inner_text("#totp-status")
    tour.shot(b, "change-refused-phone")
    b.fill("#two-factor input[name=code]", codes[2])
    b.click("button:has-text('New recovery codes')")
    assert "New recovery codes" in b.inner_text("h1")
    fresh = b.locator("#recovery-codes code").all_inner_texts()
    assert len(fresh) == 10 and not set(fresh) & set(codes)
    tour.shot(b, "new-recovery-codes-phone")
    b.click("text=Back to your account")
    assert "Recovery codes left: 10" in b.inner_text("#totp-status")

    # CSRF: a POST without the token, and a form on another site, are refused.
    refused = a.request.post(url + "/logout", form={"x": "1"})
    assert refused.status == 403
    evil = desk.new_page()
    evil.set_content(f'<form method="post" action="{url}/totp/disable"><button>Win</button></form>')
    with evil.expect_response(lambda r: r.url.endswith("/totp/disable")) as answer:
        evil.click("button")
    assert answer.value.status == 403
    evil.wait_for_load_state()
    assert "Request refused" in evil.inner_text("h1")  # the demo's refusal page
    tour.shot(evil, "csrf-refused")
    a.reload()
    assert "TOTP is on" in a.inner_text("#totp-status")  # nothing changed

    # A restart keeps sessions and the TOTP secret (the keys are in the key file).
    server.restart()
    a.reload()
    assert "Signed in as demo@example.com" in a.inner_text("main")
    a.click("button:text-is('Log out')")
    sign_in(a, url, DEMO_USER, DEMO_PASSWORD)
    tour.enter_code(a, secret, "Verify", "That code was not accepted")
    assert "Signed in as" in a.inner_text("main")
    tour.shot(a, "after-restart")

    # Turning TOTP off with a code from the app; the recovery codes go with it.
    tour.enter_code(a, secret, "Turn off TOTP", "That code was not accepted")
    assert "Two-factor sign-in is off" in a.inner_text(".notice")
    assert "TOTP is off" in a.inner_text("#totp-status")
    tour.shot(a, "totp-off")

    # The lockout, seen from a browser that never signed in to that address.
    fresh = browser.new_context(viewport=PHONE, user_agent=PHONE_UA, is_mobile=True)
    c = fresh.new_page()
    for _ in range(3):
        assert sign_in(c, url, "mallory@example.com", "guess").status == 303
    answer = sign_in(c, url, "mallory@example.com", "guess")
    assert answer.status == 429 and 0 < int(answer.headers["retry-after"]) <= 60
    assert "Sign-in locked for now" in c.inner_text("h1")
    assert "Localhost is not treated specially" in c.inner_text("main")
    tour.shot(c, "locked-phone")
    # The rate limiter answers the sixth attempt in a minute, before the lockout.
    sign_in(c, url, "mallory@example.com", "guess")
    answer = sign_in(c, url, "mallory@example.com", "guess")
    assert answer.status == 429 and "Too many requests" in c.inner_text("h1")
    assert "Try again in" in c.inner_text("#retry-after")
    tour.shot(c, "rate-limited-phone")

    for context in (desk, phone, fresh):
        context.close()
    assert tour.shots >= 22
