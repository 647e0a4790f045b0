#!/usr/bin/env python3
"""Real clients of weir's admin HTTP endpoint, for tests/it/status_page.rs.
Each prints one JSON object and exits non-zero on a failed check; every wait
has a timeout.

    admin_peers.py openapi ADMIN TOKEN CONFIG
        Checks the served OpenAPI document (openapi-spec-validator) and every
        answer of every documented call against its schema (jsonschema),
        including the errors and an event of the stream. CONFIG is weir's
        config file: the reload calls break it and restore it.
    admin_peers.py browser ADMIN TOKEN PORT_A PORT_B SCREENSHOT
        Drives the status page in headless Chromium (Playwright on Debian's
        chromium): the backends listening on PORT_A and PORT_B (run by this
        script) go down and come back while the page stays open; a drain is
        refused without the token and done with it.
"""
import http.client
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

TIMEOUT = 10


def request(admin, method, path, body=None, headers=None):
    """(status, headers, parsed JSON body or raw text)."""
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(f"http://{admin}{path}", data=data, method=method)
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            status, h, raw = r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        status, h, raw = e.code, e.headers, e.read()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw.decode(errors="replace")
    return status, h, parsed


def wait_for(cond, what):
    end = time.monotonic() + TIMEOUT
    while not cond():
        check(time.monotonic() < end, what)
        time.sleep(0.05)


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def openapi(admin, token, config):
    from jsonschema import Draft202012Validator
    from openapi_spec_validator import validate

    status, headers, doc = request(admin, "GET", "/api/v1/openapi.json")
    check(status == 200, f"openapi.json: {status}")
    validate(doc)
    base = doc["servers"][0]["url"]
    auth = {"Authorization": f"Bearer {token}"}
    seen = set()  # (template, method, status)

    def schema_for(template, method, status, content="application/json"):
        op = doc["paths"][template][method]
        resp = op["responses"].get(str(status))
        check(resp is not None, f"{method.upper()} {template} answered {status}, which is not documented")
        return resp["content"][content]["schema"]

    def validator(schema):
        # The document's components, so that $refs resolve.
        root = {"$schema": "https://json-schema.org/draft/2020-12/schema",
                "components": doc["components"], **schema}
        return Draft202012Validator(root)

    def call(method, template, path=None, body=None, headers=None, expect=200):
        status, h, answer = request(admin, method.upper(), base + (path or template), body, headers)
        check(status == expect, f"{method.upper()} {path or template}: {status} {answer}, expected {expect}")
        check(h.get("Content-Type", "").startswith("application/json"), f"{path}: content type {h.get('Content-Type')}")
        for name in ("X-Content-Type-Options", "X-Frame-Options", "Content-Security-Policy"):
            check(h.get(name), f"{path}: no {name}")
        errors = sorted(validator(schema_for(template, method, status)).iter_errors(answer), key=str)
        check(not errors, f"{method.upper()} {path or template} ({status}) does not match the document: "
              + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5]))
        seen.add((template, method, status))
        return answer

    BK = "/pools/{pool}/backends/{backend}"
    pool, backend = "db", "a"
    concrete = lambda t: t.replace("{pool}", pool).replace("{backend}", backend).replace("{listener}", "front")

    # The event stream, read while the changes below happen: one event of
    # every kind (a backend's transition, a tier change, a firewall rule, a
    # reload), each as its own named server-sent event.
    events = []
    ready = threading.Event()
    kinds = {"backend", "tier", "firewall", "reload"}

    def read_events():
        host, port = admin.rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
        conn.request("GET", "/api/v1/events")
        r = conn.getresponse()
        head = r.getheader("Content-Type", "")
        ready.set()
        lines = []
        deadline = time.monotonic() + 3 * TIMEOUT
        while time.monotonic() < deadline:
            line = r.readline().decode()
            if line == "":
                break
            if line == "\n" and lines:
                events.append((head, "\n".join(lines)))
                lines = []
                if kinds <= {name for name, _ in parsed_events()}:
                    break
            elif line.strip() and not line.startswith(":"):
                lines.append(line.rstrip("\n"))
        conn.close()

    def parsed_events():
        out = []
        for _, body in events:
            name = data = None
            for line in body.splitlines():
                if line.startswith("event:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("data:") and data is None:
                    data = json.loads(line.split(":", 1)[1])
            out.append((name, data))
        return out

    reader = threading.Thread(target=read_events)
    reader.start()
    ready.wait(TIMEOUT)
    time.sleep(0.3)

    # Reads.
    for t in ["/status", "/listeners", "/routes", "/pools", "/backends", "/pools/{pool}/backends",
              "/pools/{pool}/history", BK, BK + "/history", "/firewall/rules"]:
        call("get", t, concrete(t))
    # Changes, with the token.
    call("post", BK + "/drain", concrete(BK + "/drain"), headers=auth)
    call("post", BK + "/enable", concrete(BK + "/enable"), headers=auth)
    call("post", BK + "/disable", concrete(BK + "/disable"), headers=auth)
    call("post", BK + "/enable", concrete(BK + "/enable"), headers=auth)
    call("post", BK + "/weight", concrete(BK + "/weight"), body={"weight": 5}, headers=auth)
    call("post", BK + "/weight", concrete(BK + "/weight"), body={"weight": None}, headers=auth)
    rule = call("post", "/firewall/rules", body={"network": "192.0.2.0/24", "action": "deny",
                                                  "duration_ms": 60000, "reason": "test"}, headers=auth)
    check(rule["action"] == "deny" and rule["until_ms"], f"rule {rule}")
    listed = call("get", "/firewall/rules")
    check([r["network"] for r in listed["rules"]] == ["192.0.2.0/24"], f"rules {listed}")
    call("post", "/firewall/rules/remove", body={"network": "192.0.2.0/24"}, headers=auth)
    l = call("post", "/listeners/{listener}/max_connections", concrete("/listeners/{listener}/max_connections"),
             body={"max_connections": 77}, headers=auth)
    check(l["max_connections"] == 77, f"listener {l}")
    call("post", "/listeners/{listener}/max_connections", concrete("/listeners/{listener}/max_connections"),
         body={"max_connections": None}, headers=auth)
    r = call("post", "/reload", headers=auth)
    check(r["generation"] >= 2, f"reload {r}")
    # A backend added and removed at runtime.
    added = call("post", "/pools/{pool}/backends", concrete("/pools/{pool}/backends"),
                 body={"address": "127.0.0.1:9", "name": "extra", "weight": 3, "tier": 1}, headers=auth)
    check(added["origin"] == "runtime" and added["weight"] == 3 and added["tier"] == 1, f"added {added}")
    call("post", "/pools/{pool}/backends", concrete("/pools/{pool}/backends"),
         body={"address": "127.0.0.1:9", "name": "extra"}, headers=auth, expect=409)
    call("post", "/pools/{pool}/backends", concrete("/pools/{pool}/backends"),
         body={"address": "not-an-address"}, headers=auth, expect=400)
    call("post", "/pools/{pool}/backends", "/pools/nope/backends",
         body={"address": "127.0.0.1:9"}, headers=auth, expect=404)
    # Both tier-0 backends out: the pool fails over to tier 1 (a tier
    # event), and back.
    call("post", BK + "/disable", "/pools/db/backends/a/disable", headers=auth)
    call("post", BK + "/disable", "/pools/db/backends/b/disable", headers=auth)
    call("post", BK + "/enable", "/pools/db/backends/a/enable", headers=auth)
    call("post", BK + "/enable", "/pools/db/backends/b/enable", headers=auth)
    removed = call("post", BK + "/remove", "/pools/db/backends/extra/remove", headers=auth)
    check(removed["effective_weight"] == 0, f"removed {removed}")
    call("post", BK + "/remove", concrete(BK + "/remove"), headers=auth, expect=409)
    call("post", BK + "/remove", "/pools/db/backends/nope/remove", headers=auth, expect=404)

    e = call("get", "/explain", "/explain?listener=front&client=127.0.0.1%3A5000&sni=db.test")
    check(e["route"] == "r" and e["pools"][0]["name"] == "db", f"explain {e}")
    call("get", "/explain", "/explain?listener=front", expect=400)
    call("get", "/explain", "/explain?listener=nope&client=127.0.0.1", expect=404)
    call("get", "/explain", "/explain?listener=front&client=127.0.0.1&color=blue", expect=400)
    # A request is explained on l7 routes only; an l4 route has no rules.
    e = call("get", "/explain", "/explain?listener=front&client=127.0.0.1&path=/a&header=X-A:+1")
    check(e["http"] is None and e["route"] == "r", f"explain {e}")
    call("get", "/explain", "/explain?listener=front&client=127.0.0.1&path=a", expect=400)

    # Live connections: listed, and closed by a filter.
    listed = call("get", "/connections", "/connections?client=127.0.0.0%2F8&limit=5")
    check(listed["total"] >= len(listed["connections"]), f"connections {listed}")
    call("get", "/connections")
    call("get", "/connections", "/connections?client=bogus", expect=400)
    call("get", "/connections", "/connections?pool=nope", expect=404)
    call("get", "/connections", "/connections?color=blue", expect=400)
    closed = call("post", "/connections/close", body={"client": "192.0.2.1"}, headers=auth)
    check(closed["closed"] == 0, f"closed {closed}")
    call("post", "/connections/close", body={}, headers=auth, expect=400)
    call("post", "/connections/close", body={"client": "192.0.2.1"}, expect=401)

    # Errors, each in the documented shape.
    call("post", BK + "/drain", concrete(BK + "/drain"), expect=401)
    call("post", BK + "/drain", concrete(BK + "/drain"), headers={"Authorization": "Bearer wrong"}, expect=401)
    call("post", BK + "/drain", concrete(BK + "/drain"),
         headers={**auth, "Origin": "http://evil.example"}, expect=403)
    call("get", "/pools/{pool}/backends", "/pools/nope/backends", expect=404)
    call("get", BK, "/pools/db/backends/nope", expect=404)
    call("get", BK + "/history", "/pools/db/backends/nope/history", expect=404)
    call("get", "/pools/{pool}/history", "/pools/nope/history", expect=404)
    call("post", BK + "/drain", "/pools/db/backends/nope/drain", headers=auth, expect=404)
    call("post", BK + "/weight", concrete(BK + "/weight"), body={"weight": "heavy"}, headers=auth, expect=400)
    call("post", BK + "/weight", concrete(BK + "/weight"), body={}, headers=auth, expect=400)
    call("post", BK + "/weight", concrete(BK + "/weight"), body=b"{not json", headers=auth, expect=400)
    call("post", BK + "/weight", concrete(BK + "/weight"), body={"weight": 1, "wieght": 2}, headers=auth, expect=400)
    call("post", BK + "/weight", concrete(BK + "/weight"), body=b" " * 20000, headers=auth, expect=413)
    call("post", "/firewall/rules", body={"network": "not-a-net", "action": "deny"}, headers=auth, expect=400)
    call("post", "/firewall/rules", body={"network": "192.0.2.1", "action": "maybe"}, headers=auth, expect=400)
    call("post", "/firewall/rules/remove", body={"network": "198.51.100.0/24"}, headers=auth, expect=404)
    call("post", "/listeners/{listener}/max_connections", "/listeners/nope/max_connections",
         body={"max_connections": 5}, headers=auth, expect=404)
    call("post", "/listeners/{listener}/max_connections", concrete("/listeners/{listener}/max_connections"),
         body={"max_connections": 0}, headers=auth, expect=400)
    original = open(config).read()
    try:
        open(config, "w").write(original + "\n[[pools]]\nname = 3\n")
        call("post", "/reload", headers=auth, expect=409)
    finally:
        open(config, "w").write(original)

    # No change through GET, and errors for unknown paths, in the same shape.
    for path in [concrete(BK + "/drain"), "/reload", "/firewall/rules/remove"]:
        status, _, answer = request(admin, "GET", base + path)
        check(status == 405 and answer["error"]["code"] == "method_not_allowed", f"GET {path}: {status} {answer}")
    status, _, answer = request(admin, "GET", base + "/nothing/here")
    check(status == 404 and validator({"$ref": "#/components/schemas/Error"}).is_valid(answer), f"{status} {answer}")

    reader.join(3 * TIMEOUT)
    check(events, "no event read")
    check("text/event-stream" in events[0][0], f"events head {events[0][0]}")
    parsed = parsed_events()
    check(parsed[0][0] == "backend", f"first event {events[0][1]!r}")
    names = {name for name, _ in parsed}
    check(kinds <= names, f"event kinds seen: {sorted(n for n in names if n)}, want {sorted(kinds)}")
    event_schema = validator(schema_for("/events", "get", 200, "text/event-stream"))
    for name, data in parsed:
        errors = list(event_schema.iter_errors(data))
        check(not errors, f"{name} event {data}: {errors[:3]}")
    tier = next(data for name, data in parsed if name == "tier")
    check("db" in json.dumps(tier), f"tier event {tier}")
    seen.add(("/events", "get", 200))

    # Every documented call was made, and answered 200 at least once.
    missing = [f"{m.upper()} {t}" for t, ops in doc["paths"].items() for m in ops
               if t != "/openapi.json" and (t, m, 200) not in seen]
    check(not missing, f"never called: {missing}")
    print(json.dumps({"checked": len(seen), "calls": sorted(f"{m.upper()} {t} {s}" for t, m, s in seen)}))


class Backend:
    """A TCP listener that accepts and holds connections, and can stop
    listening (connections refused) and start again on the same port."""

    def __init__(self, port):
        self.port = port
        self.sock = None

    def start(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.sock = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def _accept(self, s):
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return
            c.close()

    def stop(self):
        self.sock.close()
        self.sock = None


def browser(admin, token, port_a, port_b, screenshot):
    from playwright.sync_api import expect, sync_playwright

    a, b = Backend(int(port_a)), Backend(int(port_b))
    a.start()
    b.start()
    out = {}
    url = f"http://{admin}/"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        try:
            page = chromium.new_page(viewport={"width": 1400, "height": 900})
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            # The refused drain below logs its 401; anything else is a fault.
            page.on("console", lambda m: m.type == "error" and "401" not in m.text and errors.append(m.text))
            page.goto(url, timeout=TIMEOUT * 1000)
            expect(page.locator("#live")).to_have_text("live", timeout=TIMEOUT * 1000)
            row = lambda name: page.locator(f'tr[data-pool="db"][data-backend="{name}"]')
            expect(row("a").locator("td.health")).to_have_text("up", timeout=TIMEOUT * 1000)
            expect(row("b").locator("td.health")).to_have_text("up", timeout=TIMEOUT * 1000)
            # A mark the page would lose if it were reloaded.
            page.evaluate("window.__weirMark = 42")

            # One backend down, then both: the page says so, never "OK".
            a.stop()
            expect(row("a").locator("td.health")).to_have_text("down", timeout=TIMEOUT * 1000)
            expect(row("a").locator("td.probe")).to_contain_text("failed", timeout=TIMEOUT * 1000)
            expect(page.locator('section.pool[data-pool="db"] .pool-state')).to_have_text("serving 1/2")
            b.stop()
            expect(page.locator('#alerts .alert[data-pool="db"]')).to_contain_text("no serving backend",
                                                                                 timeout=TIMEOUT * 1000)
            expect(page.locator('section.pool[data-pool="db"] .pool-state')).to_have_text("NO SERVING BACKEND")
            expect(page.locator('#events li[data-kind="backend"]').first).to_contain_text("db/b: health up → down")
            out["saw_down"] = True
            # A client now is refused (no_backend): the listener's row counts it
            # by reason.
            _, _, listeners = request(admin, "GET", "/api/v1/listeners")
            front = next(l for l in listeners["listeners"] if l["name"] == "front")
            host, port = front["bind"][0].rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=TIMEOUT) as c:
                c.settimeout(TIMEOUT)
                try:
                    while c.recv(64):
                        pass
                except OSError:
                    pass
            listener_row = page.locator('#listeners tr[data-listener="front"]')
            expect(listener_row.locator("td.rejected")).to_contain_text("no_backend", timeout=TIMEOUT * 1000)
            # The failed probe says why and how long it took; the transition its cause.
            expect(row("a").locator("td.probe")).to_contain_text("checks:")
            expect(row("a").locator("td.transitions")).to_contain_text("up → down (")
            # Slots in use against the backend's limit.
            expect(row("b").locator("td.conns")).to_contain_text("of 50 in use")

            # Back up, live.
            a.start()
            b.start()
            expect(row("a").locator("td.health")).to_have_text("up", timeout=TIMEOUT * 1000)
            expect(row("b").locator("td.health")).to_have_text("up", timeout=TIMEOUT * 1000)
            expect(page.locator("#alerts .alert")).to_have_count(0)
            check(page.evaluate("window.__weirMark") == 42, "the page was reloaded")
            out["saw_up_again"] = True
            # The routes and the pool's active tier.
            expect(page.locator("#routes tbody tr").first).to_contain_text("db")
            expect(page.locator('section.pool[data-pool="db"] .pool-info')).to_contain_text("active tier 0")

            # A drain without the token is refused and changes nothing.
            row("a").locator('button[data-action="drain"]').click()
            expect(page.locator("#message")).to_contain_text("refused (401)", timeout=TIMEOUT * 1000)
            status, _, backend = request(admin, "GET", "/api/v1/pools/db/backends/a")
            check(status == 200 and backend["admin"] == "enabled", f"after a refused drain: {backend}")
            # With the token it is done, and the page shows it.
            page.fill("#token", token)
            row("a").locator('button[data-action="drain"]').click()
            expect(page.locator("#message")).to_contain_text("drain done", timeout=TIMEOUT * 1000)
            expect(row("a").locator("td.admin")).to_have_text("drain", timeout=TIMEOUT * 1000)
            status, _, backend = request(admin, "GET", "/api/v1/pools/db/backends/a")
            check(backend["admin"] == "drain", f"after the drain: {backend}")
            # Disable and enable through the page too.
            row("a").locator('button[data-action="disable"]').click()
            expect(row("a").locator("td.admin")).to_have_text("disabled", timeout=TIMEOUT * 1000)
            row("a").locator('button[data-action="enable"]').click()
            expect(row("a").locator("td.admin")).to_have_text("enabled", timeout=TIMEOUT * 1000)
            row("a").locator('button[data-action="drain"]').click()
            expect(row("a").locator("td.admin")).to_have_text("drain", timeout=TIMEOUT * 1000)
            # A weight typed into the page.
            row("b").locator("input.weight-input").fill("3")
            row("b").locator('button[data-action="weight"]').click()
            expect(row("b").locator("td.weight")).to_contain_text("3 (set at runtime", timeout=TIMEOUT * 1000)
            out["drained_with_token"] = True
            check(page.evaluate("window.__weirMark") == 42, "the page was reloaded")

            page.wait_for_timeout(300)
            page.screenshot(path=screenshot, full_page=True)
            # Readable on a phone: nothing wider than the screen but tables
            # that scroll inside their own box.
            phone = chromium.new_page(viewport={"width": 390, "height": 844}, is_mobile=True)
            phone.goto(url, timeout=TIMEOUT * 1000)
            expect(phone.locator('tr[data-backend="a"] td.admin')).to_have_text("drain", timeout=TIMEOUT * 1000)
            width = phone.evaluate("document.documentElement.scrollWidth")
            check(width <= 390, f"the page is {width}px wide on a 390px phone")
            out["phone_width"] = width
            # A tab hidden lets go of its event stream (browsers give one host
            # six connections: tabs in the background would take them all);
            # shown again, it follows again.
            expect(phone.locator("#live")).to_have_text("live", timeout=TIMEOUT * 1000)
            streams = lambda: int(float(next(
                l.split()[-1] for l in request(admin, "GET", "/metrics")[2].splitlines()
                if l.startswith("weir_admin_event_streams_active"))))
            wait_for(lambda: streams() == 2, "two pages follow the events")
            hide = "hidden => { Object.defineProperty(document, 'hidden', {value: hidden, configurable: true});" \
                " document.dispatchEvent(new Event('visibilitychange')); }"
            phone.evaluate(hide, True)
            expect(phone.locator("#live")).to_have_text("paused", timeout=TIMEOUT * 1000)
            wait_for(lambda: streams() == 1, "the hidden page let go of its stream")
            phone.evaluate(hide, False)
            expect(phone.locator("#live")).to_have_text("live", timeout=TIMEOUT * 1000)
            wait_for(lambda: streams() == 2, "the page shown again follows the events")
            out["hidden_tab_lets_go"] = True
            check(not errors, f"errors in the page: {errors}")
            phone.close()
            page.close()
            wait_for(lambda: streams() == 0, "closed pages let go of their streams")

            # A page refused its event stream (503: this client holds as many
            # as it may) follows again once there is room: an EventSource
            # gives up for good after an answer that is no stream.
            held = []
            while len(held) < 1000:
                s = socket.create_connection(tuple(admin.rsplit(":", 1)), timeout=TIMEOUT)
                s.sendall(f"GET /api/v1/events HTTP/1.1\r\nHost: {admin}\r\n\r\n".encode())
                status = s.recv(64)
                if status.startswith(b"HTTP/1.1 200"):
                    held.append(s)
                    continue
                check(status.startswith(b"HTTP/1.1 503"), f"a stream past the limit: {status!r}")
                s.close()
                break
            late = chromium.new_page()
            late.goto(url, timeout=TIMEOUT * 1000)
            expect(late.locator("#live")).to_have_text("reconnecting", timeout=TIMEOUT * 1000)
            for s in held:
                s.close()
            expect(late.locator("#live")).to_have_text("live", timeout=TIMEOUT * 1000)
            out["refused_stream_followed_again"] = True
        finally:
            chromium.close()
    print(json.dumps(out))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {"openapi": openapi, "browser": browser}[cmd](*args)
