"""The web console in a real browser: Debian's chromium driven by Playwright against a real
server, signing in through a real OpenID Connect provider on 127.0.0.1 (oidc-provider-mock).

Screenshots of each page go to the module's output directory (printed; set
SANDBOXD_CONSOLE_SCREENSHOTS to keep them somewhere else).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import baponi
import httpx
import pytest
from conftest import Server, run_cli, start_server, stop_all

CHROMIUM = "/usr/bin/chromium"
#: The flags this machine's Chromium needs (root, no GPU, a closed network).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
CLIENT_ID = "sandboxd-console"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")


class Provider:
    """oidc-provider-mock serving on 127.0.0.1 in a thread: a real OpenID provider (discovery,
    JWKS, authorization code flow, signed ID tokens) whose users' claims the test sets."""

    def __init__(self) -> None:
        import oidc_provider_mock
        import werkzeug.serving

        users = [
            oidc_provider_mock.User(sub="ana", claims={"email": "ana@example.com", "org": "default", "role": "owner"}),
            oidc_provider_mock.User(
                sub="audrey", claims={"email": "audrey@example.com", "org": "default", "role": "auditor"}
            ),
            oidc_provider_mock.User(sub="max", claims={"email": "max@example.com", "org": "default", "role": "member"}),
            oidc_provider_mock.User(sub="eve", claims={"email": "eve@example.com", "org": "default", "role": "root"}),
            oidc_provider_mock.User(sub="olga", claims={"email": "olga@example.com", "org": "nowhere", "role": "owner"}),
        ]
        app = oidc_provider_mock.app(require_nonce=True, user_claims=users)
        self._server = werkzeug.serving.make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._thread.join(5)


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    provider = Provider()
    try:
        yield provider
    finally:
        provider.close()


@pytest.fixture(scope="module")
def console_server(provider: Provider) -> Iterator[Server]:
    root = Path(tempfile.mkdtemp(prefix="sandboxd-console-"))
    os.chmod(root, 0o700)
    secret = root / "oidc-client-secret"
    secret.write_text("console-client-secret\n")
    server = start_server(
        root / "data", oidc_issuer=provider.url, oidc_client_id=CLIENT_ID, oidc_client_secret_file=secret,
        pool_enabled="false", auth_failures_allowed=20,  # the tests fail some sign-ins on purpose
    )
    try:
        yield server
    finally:
        stop_all([server])
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get("SANDBOXD_CONSOLE_SCREENSHOTS")
    path = Path(configured) if configured else tmp_path_factory.mktemp("console-screenshots")
    path.mkdir(parents=True, exist_ok=True)
    print(f"console screenshots: {path}")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _page(browser: Any, server: Server, **options: Any) -> Any:
    context = browser.new_context(base_url=server.url, **options)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    page = context.new_page()
    page.set_default_timeout(30_000)
    return page


def _sign_in(page: Any, server: Server, subject: str) -> None:
    """Through the provider: the console's button, the provider's form, back to the console."""
    page.goto("/console/")
    assert "/console/sign-in" in page.url
    page.click("#oidc-sign-in")
    page.wait_for_url(re.compile(r".*/oauth2/authorize.*"))
    page.click(f"button[name=sub][value={subject}]")
    page.wait_for_url(re.compile(r".*/console/.*"))
    assert "/sign-in" not in page.url, page.content()


#: Form fields no <label> names (a screen reader would read them as "edit text").
_UNLABELLED = """[...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
    .filter(field => field.labels.length === 0).map(field => field.name || field.id)"""


def _shot(page: Any, shots: Path, name: str) -> None:
    """A screenshot of the page, which also must label every field it has."""
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    assert page.evaluate(_UNLABELLED) == [], name


def test_owner_signs_in_configures_runs_finds_and_revokes(browser: Any, console_server: Server, shots: Path) -> None:
    server = console_server
    page = _page(browser, server)
    page.goto("/console/sign-in")
    _shot(page, shots, "sign-in")
    _sign_in(page, server, "ana")
    assert page.locator("h1").inner_text() == "Dashboard"
    blocked: list[str] = []  # the content security policy blocks nothing the console itself does
    page.on("console", lambda msg: blocked.append(msg.text) if "Content Security Policy" in msg.text else None)
    assert "ana@example.com · owner · default" in page.locator(".who").inner_text()
    _shot(page, shots, "dashboard-empty")

    # A sandbox config: a bad name first (the API's message beside the form), then a good one.
    page.goto("/console/sandboxes")
    page.click("summary")
    page.fill("#f-name", "Not A Name")
    page.click("#create-sandbox")
    assert "sandbox name must be" in page.locator("#e-name").inner_text()
    _shot(page, shots, "sandboxes-invalid")
    page.fill("#f-name", "console-small")
    page.fill("#f-cpus", "0.5")
    page.fill("#f-memory_mib", "256")
    page.fill("#f-timeout_cap_s", "30")
    page.click("#create-sandbox")
    page.wait_for_url("**/console/sandboxes")
    row = page.locator("tr[data-sandbox=console-small]")
    assert "0.5" in row.inner_text() and "256 MiB" in row.inner_text()
    _shot(page, shots, "sandboxes")
    page.click("text=console-small")  # edit: a bad value first, then a good one
    page.fill("#f-memory_mib", "8")
    page.click("#save-sandbox")
    assert "memory_mib must be between" in page.locator("#e-memory_mib").inner_text()
    assert page.locator("#f-memory_mib").get_attribute("aria-invalid") == "true"
    _shot(page, shots, "sandbox-edit-invalid")
    page.fill("#f-memory_mib", "384")
    page.click("#save-sandbox")
    page.wait_for_url("**/console/sandboxes")
    assert "384 MiB" in page.locator("tr[data-sandbox=console-small]").inner_text()

    # A connector (its secret never shown again) and a storage connection (bad credentials first).
    page.goto("/console/connectors")
    page.click("summary")
    page.fill("#f-name", "greeting")
    page.fill("#f-secret", "GREETING=hello-from-a-connector")
    page.click("#create-connector")
    page.wait_for_url("**/console/connectors")
    assert "greeting" in page.locator("tr[data-connector=greeting]").inner_text()
    assert "hello-from-a-connector" not in page.content()
    page.goto("/console/storage")
    page.click("summary")
    page.fill("#f-name", "reports")
    page.fill("#f-bucket", "acme-reports")
    page.fill("#f-credentials", "not json")
    page.click("#create-storage")
    assert "credentials must be a JSON object" in page.locator("#e-credentials").inner_text()
    assert page.locator("#f-credentials").input_value() == ""  # a secret is never sent back
    page.fill("#f-credentials", '{"access_key_id": "AKIAEXAMPLE", "secret_access_key": "s3cr3t-value"}')
    page.click("#create-storage")
    page.wait_for_url("**/console/storage")
    assert "acme-reports" in page.locator("tr[data-storage=reports]").inner_text()
    assert "s3cr3t-value" not in page.content()
    _shot(page, shots, "storage")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator("tr[data-storage=reports] button.danger").click()
    page.wait_for_url("**/console/storage")
    assert page.locator("tr[data-storage=reports]").count() == 0

    # A key bound to the config and the connector, shown once, copied with the button.
    page.goto("/console/keys")
    page.fill("#f-name", "console-key")
    page.select_option("#f-sandbox", "console-small")
    page.check("#connector-greeting")
    page.click("#create-key")
    shown = page.locator("#new-key").input_value()
    assert re.fullmatch(r"sk-local-[A-Za-z0-9]{40}", shown)
    page.click("#copy-key")
    expect(page.locator(".copied")).to_have_text("Copied")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == shown
    _shot(page, shots, "keys-created")
    page.goto("/console/keys")  # shown once: not on the page again, only its prefix
    assert shown not in page.content() and shown[:13] + "…" in page.content()
    key_row = page.locator("tr", has_text="console-key")
    assert key_row.count() == 1
    key_id = key_row.get_attribute("data-key")
    assert "console-small" in key_row.inner_text() and "ana@example.com" in key_row.inner_text()  # its creator

    with baponi.Baponi(api_key=copied, base_url=server.url) as sdk:
        assert sdk.execute("print(6 * 7)").stdout == "42\n"

    # The organization's audit rows keep the code (off by default), so the run's page can show it.
    done = run_cli("audit", "code", "default", "on", "--data-dir", str(server.data_dir))
    assert done.returncode == 0, done.stderr

    # Try it: the output arrives while the code still runs.
    page.goto("/console/try")
    page.select_option("#try-key", key_id)
    page.fill(
        "#try-code",
        "import time\nprint('first', flush=True)\ntime.sleep(2)\nprint('second', flush=True)",
    )
    page.click("#try-run")
    expect(page.locator("#try-output")).to_contain_text("first", timeout=30_000)
    assert "second" not in page.locator("#try-output").inner_text()
    assert page.locator("#try-status").get_attribute("data-done") is None  # still running: streamed
    page.wait_for_selector("#try-status[data-done=success]", timeout=60_000)
    assert page.locator("#try-output").inner_text() == "first\nsecond\n"
    trace_id = page.locator("#try-trace-link").inner_text().split()[-1]
    _shot(page, shots, "try-it")

    # The executions page finds it by key, and shows it whole.
    page.goto(f"/console/executions?key={key_id}")
    assert trace_id in page.locator("#executions").inner_text()
    _shot(page, shots, "executions")
    page.goto("/console/executions?status=success&language=bash")
    assert trace_id not in page.locator("#executions").inner_text()
    page.goto(f"/console/executions?key={key_id}")
    page.click(f"text={trace_id}")
    assert page.locator("#stdout").inner_text() == "first\nsecond\n"
    assert "sandboxd-console" in page.content()  # the client it came from
    assert "greeting (env)" in page.locator("#connectors-used").inner_text()
    facts = page.locator("dl.facts").inner_text()  # the cgroup's figures, from the result
    assert "CPU time" in facts and "Memory peak" in facts
    _shot(page, shots, "execution")

    # The audit log: the run (its code kept: the organization's setting) and the key's creation; exported.
    assert "time.sleep(2)" in page.locator("#code").inner_text()
    page.goto(f"/console/audit?trace_id={trace_id}")
    assert trace_id in page.locator("#audit").inner_text()
    page.goto("/console/audit?action=key.create")
    audit_rows = page.locator("#audit").inner_text()
    assert "key.create" in audit_rows and "ana@example.com" in audit_rows
    _shot(page, shots, "audit-search")
    with page.expect_download() as download:
        page.click("#export-jsonl")
    exported = [json.loads(line) for line in Path(download.value.path()).read_text().splitlines()]
    assert [row["action"] for row in exported] == ["key.create"] and exported[0]["target"] == key_id

    page.goto("/console/")
    assert int(page.locator("#stat-total").inner_text()) >= 2
    _shot(page, shots, "dashboard")
    for name in ("images", "volumes", "connectors", "webhook", "plan", "members", "audit"):
        page.goto(f"/console/{name}")
        assert page.locator("h1").is_visible()
        _shot(page, shots, name)
    page.goto("/console/plan")  # the plan and this month's usage, counting the runs above
    assert "Enterprise plan" in page.locator("main").inner_text()
    assert re.search(r"executions\s+[2-9]", page.locator("main").inner_text())

    # Members: add one (a bad address first), change the role, issue a token shown once.
    page.goto("/console/members")
    page.fill("#f-email", "not an address")
    page.click("#add-member")
    assert "email must be" in page.locator("#e-email").inner_text()
    page.fill("#f-email", "bob@example.com")
    page.select_option("#f-role", "auditor")
    page.click("#add-member")
    page.wait_for_url("**/console/members")
    bob = page.locator("tr[data-member='bob@example.com']")
    bob.locator("select").select_option("member")
    bob.locator("button", has_text="Save").click()
    page.wait_for_url("**/console/members")
    assert page.locator("tr[data-member='bob@example.com'] select").input_value() == "member"
    page.locator("tr[data-member='bob@example.com'] button", has_text="Issue token").click()
    assert re.fullmatch(r"sda-[A-Za-z0-9]{40}", page.locator("#new-token").input_value())
    _shot(page, shots, "members")

    # Revoke: the SDK's next call is refused.
    page.goto("/console/keys")
    page.once("dialog", lambda dialog: dialog.accept())
    page.locator(f"tr[data-key={key_id}] button.danger").click()
    page.wait_for_url("**/console/keys")
    assert "revoked" in page.locator(f"tr[data-key={key_id}]").inner_text()
    _shot(page, shots, "keys-revoked")
    with baponi.Baponi(api_key=copied, base_url=server.url) as sdk:
        with pytest.raises(baponi.AuthenticationError) as refused:
            sdk.execute("print(1)")
    assert refused.value.status_code == 401

    assert not blocked, blocked
    headers = page.request.get("/console/keys").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"] and headers["x-frame-options"] == "DENY"

    # Sign out: the session is gone server-side too.
    cookie = next(c for c in page.context.cookies() if c["name"] == "sandboxd_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    page.click("text=Sign out")
    page.wait_for_url("**/console/sign-in")
    answer = httpx.get(f"{server.url}/console/keys", cookies={"sandboxd_console": cookie["value"]})
    assert answer.status_code == 303 and "/console/sign-in" in answer.headers["location"]
    page.context.close()


def test_an_auditor_sees_no_create_button_and_a_crafted_post_is_refused(
    browser: Any, console_server: Server, shots: Path
) -> None:
    page = _page(browser, console_server)
    _sign_in(page, console_server, "audrey")
    page.goto("/console/keys")
    assert page.locator("#create-key").count() == 0 and page.locator("button.danger").count() == 0
    nav = page.locator("#nav").inner_text()
    assert "Members" not in nav and "Try it" not in nav and "Audit log" in nav
    _shot(page, shots, "keys-auditor")
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    crafted = page.request.post("/console/keys", form={"name": "sneaky", "sandbox": "default", "csrf_token": csrf})
    assert crafted.status == 403
    assert crafted.json() == {"error": "forbidden", "message": "the auditor role may not change this organization's configuration"}
    assert page.request.get("/console/members").status == 403
    page.goto("/console/keys")
    assert "sneaky" not in page.content()
    page.context.close()


def test_a_form_post_without_the_csrf_token_is_refused(browser: Any, console_server: Server) -> None:
    page = _page(browser, console_server)
    _sign_in(page, console_server, "ana")
    before = page.request.get("/console/keys").text()
    for form in ({"name": "no-csrf", "sandbox": "default"}, {"name": "no-csrf", "sandbox": "default", "csrf_token": "0" * 64}):
        answer = page.request.post("/console/keys", form=form)
        assert answer.status == 403
        body = answer.json()
        assert body["error"] == "forbidden" and "CSRF" in body["message"]
    refused = page.request.post(
        "/console/try/run", data=json.dumps({"key_id": "key_x", "code": "print(1)"}),
        headers={"Content-Type": "application/json"},
    )
    assert refused.status == 403
    assert "no-csrf" not in page.request.get("/console/keys").text() and "no-csrf" not in before
    page.context.close()


def test_the_admin_token_form_signs_in_without_an_identity_provider(browser: Any, console_server: Server) -> None:
    token = (console_server.data_dir / "owner.token").read_text().split()[-1]
    page = _page(browser, console_server)
    page.goto("/console/sign-in")
    page.fill("#f-token", "sda-" + "x" * 40)
    page.click("text=Sign in with a token")
    assert page.locator("#e-token").inner_text() == "invalid admin token"
    assert page.locator("#f-token").get_attribute("aria-invalid") == "true"
    page.fill("#f-token", token)
    page.click("text=Sign in with a token")
    page.wait_for_url("**/console/")
    assert "owner · default" in page.locator(".who").inner_text()
    # The session ends on the server's clock: the next page asks to sign in again.
    with sqlite3.connect(console_server.data_dir / "sandboxd.db") as db:
        ended = (datetime.now(timezone.utc) - timedelta(seconds=1)).isoformat()
        db.execute("UPDATE console_sessions SET expires_at = ?", (ended,))
    page.goto("/console/keys")
    assert "/console/sign-in?next=/console/keys" in page.url
    # A session opened with a token ends when the token is revoked.
    page.fill("#f-token", token)
    page.click("text=Sign in with a token")
    page.wait_for_url("**/console/keys")
    with sqlite3.connect(console_server.data_dir / "sandboxd.db") as db:
        db.execute("UPDATE admin_tokens SET revoked_at = ?", (datetime.now(timezone.utc).isoformat(),))
    page.goto("/console/volumes")
    assert "/console/sign-in?next=/console/volumes" in page.url
    page.context.close()


def test_the_console_fits_a_phone(browser: Any, console_server: Server, shots: Path) -> None:
    page = _page(browser, console_server, viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    _sign_in(page, console_server, "ana")
    assert not page.locator("#nav").is_visible()
    page.click(".menu-toggle")
    assert page.locator("#nav").is_visible()
    assert page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]") == [390, 390]
    _shot(page, shots, "phone-dashboard")
    for path in ("/console/keys", "/console/executions", "/console/members", "/console/try", "/console/keys"):
        page.goto(path)  # wide tables scroll inside their box; the page itself never scrolls sideways
        assert page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]") == [390, 390], path
    page.keyboard.press("Tab")  # the skip link comes first
    assert page.evaluate("document.activeElement.className") == "skip"
    _shot(page, shots, "phone-keys")
    page.context.close()


def test_sign_in_is_refused_for_claims_the_console_does_not_accept_and_for_a_forged_callback(
    browser: Any, console_server: Server
) -> None:
    page = _page(browser, console_server)
    for subject, reason in (("eve", "role 'root'"), ("olga", "organization 'nowhere'")):
        page.goto("/console/sign-in")
        page.click("#oidc-sign-in")
        page.click(f"button[name=sub][value={subject}]")
        page.wait_for_url(re.compile(r".*/console/auth/callback.*"))
        assert reason in page.locator("#form-error").inner_text()
        assert not any(c["name"] == "sandboxd_console" for c in page.context.cookies())
    # A callback this browser did not start (no state cookie, or another state): refused.
    page.goto("/console/auth/callback?code=stolen&state=forged")
    assert "did not start here" in page.locator("#form-error").inner_text()
    page.context.close()


def test_a_member_only_runs_code(browser: Any, console_server: Server) -> None:
    page = _page(browser, console_server)
    _sign_in(page, console_server, "max")
    page.wait_for_url("**/console/try")  # the dashboard is not theirs: straight to "Try it"
    assert page.locator("#nav").inner_text().split() == ["Try", "it"]
    for path in ("/console/keys", "/console/executions", "/console/audit", "/console/members"):
        assert page.request.get(path).status == 403, path
    csrf = page.locator('meta[name="csrf-token"]').get_attribute("content")
    refused = page.request.post("/console/sandboxes", form={"name": "nope", "csrf_token": csrf})
    assert refused.status == 403 and refused.json()["error"] == "forbidden"
    # They run code with the organization's keys: a refusal shows the API's message, then a run.
    made = run_cli("keys", "create", "--name", "member-key", "--data-dir", str(console_server.data_dir))
    assert made.returncode == 0, made.stderr
    page.reload()
    page.fill("#try-timeout", "99999")
    page.click("#try-run")
    page.wait_for_selector("#try-error:not([hidden])")
    assert "timeout" in page.locator("#try-error").inner_text()
    page.fill("#try-timeout", "10")
    page.fill("#try-code", "print('member ran this')")
    page.click("#try-run")
    page.wait_for_selector("#try-status[data-done=success]", timeout=60_000)
    assert page.locator("#try-output").inner_text() == "member ran this\n"
    assert page.locator("#try-trace-link").count() == 0  # the run's page is not theirs to read
    # The run is the member's, from the browser's address: its audit row says so, not only the key.
    trace_id = page.locator("#try-trace").inner_text().removeprefix("Execution ").strip()
    row = _audit_row(console_server, trace_id)
    assert row is not None, trace_id
    actor_kind, actor_id, actor_name, ip, detail = row
    assert (actor_kind, actor_name, ip) == ("member", "max@example.com", "127.0.0.1")
    assert actor_id == _member_id(console_server, "max@example.com")
    assert detail["via"] == "console" and detail["member"] == {"id": actor_id, "email": "max@example.com"}
    assert detail["client_ip"] == "127.0.0.1" and detail["key_id"] and detail["client_id"] == "sandboxd-console"
    page.context.close()


def _member_id(server: Server, email: str) -> str:
    with sqlite3.connect(server.data_dir / "sandboxd.db") as db:
        found = db.execute("SELECT id FROM members WHERE email = ?", (email,)).fetchone()
    assert found is not None, email
    return str(found[0])


def _audit_row(server: Server, trace_id: str) -> tuple[str, str, str, str, dict[str, Any]] | None:
    """The execution's audit row (written as it ends; waited for a little)."""
    for _ in range(50):
        with sqlite3.connect(server.data_dir / "sandboxd.db") as db:
            found = db.execute(
                "SELECT actor_kind, actor_id, actor_name, ip, detail FROM audit_log WHERE trace_id = ? AND kind = 'execution'",
                (trace_id,),
            ).fetchone()
        if found is not None:
            return found[0], found[1], found[2], found[3], json.loads(found[4])
        time.sleep(0.1)
    return None


def test_try_it_on_a_plan_without_streaming_runs_inline_with_a_note(browser: Any, console_server: Server) -> None:
    made = run_cli("keys", "create", "--name", "free-key", "--data-dir", str(console_server.data_dir))
    assert made.returncode == 0, made.stderr
    assigned = run_cli("plans", "assign", "default", "free", "--data-dir", str(console_server.data_dir))
    assert assigned.returncode == 0, assigned.stderr
    try:
        page = _page(browser, console_server)
        _sign_in(page, console_server, "max")
        page.wait_for_url("**/console/try")
        page.fill("#try-timeout", "10")
        page.fill("#try-code", "import sys\nprint('one')\nprint('two', file=sys.stderr)")
        page.click("#try-run")
        page.wait_for_selector("#try-status[data-done=success]", timeout=60_000)
        assert page.locator("#try-error").is_hidden()  # no "streaming delivery is not available" refusal
        assert page.locator("#try-note").inner_text() == (
            "The Free plan does not stream output: it is shown when the run ends."
        )
        assert page.locator("#try-output").inner_text() == "one\ntwo\n"
        trace_id = page.locator("#try-trace").inner_text().removeprefix("Execution ").strip()
        row = _audit_row(console_server, trace_id)
        assert row is not None and row[4]["delivery_mode"] == "inline" and row[4]["via"] == "console"
        page.context.close()
    finally:
        restored = run_cli("plans", "assign", "default", "enterprise", "--data-dir", str(console_server.data_dir))
        assert restored.returncode == 0, restored.stderr


def _sign_in_form(client: httpx.Client) -> str:
    page = client.get("/console/sign-in")
    assert page.status_code == 200
    found = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
    assert found is not None, page.text
    return found.group(1)


def test_a_planted_pre_session_cookie_does_not_sign_a_browser_in(console_server: Server) -> None:
    """Login CSRF by cookie injection: an attacker plants a pre-session value in the victim's
    browser and posts the sign-in form with its CSRF token and the attacker's own admin token."""
    data_dir = str(console_server.data_dir)
    added = run_cli("members", "add", "mallory@example.com", "--data-dir", data_dir)
    assert added.returncode == 0, added.stderr
    issued = run_cli("members", "token", "mallory@example.com", "--data-dir", data_dir)
    assert issued.returncode == 0, issued.stderr
    token = issued.stdout.strip()  # the attacker's own admin token: the victim would be signed in as them
    # The attacker's browser, on another address (127.0.0.2), gets a real pair from the server.
    attacker_transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=console_server.url, transport=attacker_transport, timeout=30) as attacker:
        attacker_csrf = _sign_in_form(attacker)
        attacker_pre = attacker.cookies.get("sandboxd_console_pre")
        assert attacker_pre
    with httpx.Client(base_url=console_server.url, timeout=30) as victim:
        # 1. A value the server issued to another address, planted with its token: refused.
        victim.cookies.set("sandboxd_console_pre", attacker_pre, path="/console")
        posted = victim.post("/console/sign-in", data={"token": token, "csrf_token": attacker_csrf})
        assert posted.status_code == 403 and "CSRF" in posted.json()["message"]
        assert "sandboxd_console" not in posted.cookies
        # 2. A value the attacker made up: the form never echoes a token for it (a fresh value
        # is issued), and the token it shows does not go with the planted value.
        victim.cookies.clear()
        victim.cookies.set("sandboxd_console_pre", "planted-by-attacker", path="/console")
        page = victim.get("/console/sign-in")
        issued = page.cookies.get("sandboxd_console_pre")
        assert issued and issued != "planted-by-attacker"
        shown = re.search(r'name="csrf_token" value="([0-9a-f]+)"', page.text)
        assert shown is not None
        victim.cookies.clear()
        victim.cookies.set("sandboxd_console_pre", "planted-by-attacker", path="/console")
        posted = victim.post("/console/sign-in", data={"token": token, "csrf_token": shown.group(1)})
        assert posted.status_code == 403
        # 3. The victim's own fresh form still signs in (the check refuses only the planted pairs).
        victim.cookies.clear()
        csrf = _sign_in_form(victim)
        posted = victim.post("/console/sign-in", data={"token": token, "csrf_token": csrf})
        assert posted.status_code == 303 and victim.cookies.get("sandboxd_console")
