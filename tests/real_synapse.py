"""Accounts made by a real Synapse, then what MAS holds after syn2mas (driven by tests/real-synapse).

    python real_synapse.py create  STATE.json   # Synapse is running: make the accounts
    python real_synapse.py assert  STATE.json   # Synapse is stopped, syn2mas has migrated

`create` talks to Synapse only through its HTTP APIs and records what they returned (user ids,
device ids, token strings, expiries) in STATE.json (mode 0600; the caller deletes it). `assert`
reads Synapse's and MAS's databases and checks, per account, what MAS holds. Nothing secret is
ever printed: tokens are named by their first 4 characters.

Environment: SYNAPSE_URL, SYNAPSE_SHARED_SECRET, AS_TOKEN, SYNAPSE_DSN, MAS_DSN, PEPPER.
"""

import hashlib
import hmac
import json
import os
import sys
import time

import bcrypt
import psycopg2
import requests

SERVER = "example.com"
GOOGLE_PROVIDER_UUID = "018a2d3a-f273-c598-be13-d08871cd88e9"


def uid(localpart):
    return f"@{localpart}:{SERVER}"


class Synapse:
    def __init__(self, url):
        self.url = url.rstrip("/")
        self.http = requests.Session()

    def call(self, method, path, token=None, body=None, expect=200):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        r = self.http.request(method, self.url + path, json=body, headers=headers, timeout=60)
        if r.status_code != expect:
            # The body of an error never holds a secret we sent; the request body is not shown.
            raise SystemExit(f"{method} {path}: HTTP {r.status_code} (expected {expect}): {r.text[:300]}")
        return r.json() if r.content else {}

    def register_shared_secret(self, secret, username, password, admin):
        nonce = self.call("GET", "/_synapse/admin/v1/register")["nonce"]
        # Synapse's documented MAC: HMAC-SHA1 over the NUL-separated fields.
        fields = [nonce, username, password, "admin" if admin else "notadmin"]
        mac = hmac.new(secret.encode(), "\x00".join(fields).encode(), digestmod=hashlib.sha1)
        return self.call("POST", "/_synapse/admin/v1/register", body={
            "nonce": nonce, "username": username, "password": password, "admin": admin,
            "mac": mac.hexdigest(),
        })

    def login(self, user, password, device_id, name, refresh):
        body = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
            "device_id": device_id,
            "initial_device_display_name": name,
        }
        if refresh:
            body["refresh_token"] = True
        return self.call("POST", "/_matrix/client/v3/login", body=body)


def create(state_path):
    s = Synapse(os.environ["SYNAPSE_URL"])
    secret = os.environ["SYNAPSE_SHARED_SECRET"]
    st = {"passwords": {}, "sessions": {}, "gone_tokens": []}

    def password(localpart):
        st["passwords"][localpart] = f"pw-{localpart}-{os.urandom(6).hex()}"
        return st["passwords"][localpart]

    def keep(key, login):
        # A session MAS must hold: its device, token, refresh token and expiry as Synapse gave them.
        st["sessions"][key] = {
            "user_id": login["user_id"],
            "device_id": login["device_id"],
            "access_token": login["access_token"],
            "refresh_token": login.get("refresh_token"),
            "expires_in_ms": login.get("expires_in_ms"),
            "at_ms": int(time.time() * 1000),
        }

    # Shared-secret registration: an admin and an ordinary user (each gets a first session).
    admin = s.register_shared_secret(secret, "admin", password("admin"), admin=True)
    keep("admin_registration", admin)
    alice = s.register_shared_secret(secret, "alice", password("alice"), admin=False)
    keep("alice_registration", alice)

    # Password logins without and with a refresh token.
    keep("alice_phone", s.login("alice", st["passwords"]["alice"], "ALICEPHONE", "Alice's phone", False))
    keep("alice_laptop", s.login("alice", st["passwords"]["alice"], "ALICELAPTOP", "Alice's laptop", True))
    # A refresh (rotation): the first pair is replaced once the new access token is used.
    first = s.login("alice", st["passwords"]["alice"], "ALICETABLET", "Alice's tablet", True)
    st["gone_tokens"] += [("refreshed-away access token", first["access_token"]),
                          ("refreshed-away refresh token", first["refresh_token"])]
    rotated = s.call("POST", "/_matrix/client/v3/refresh", body={"refresh_token": first["refresh_token"]})
    rotated.update(user_id=first["user_id"], device_id=first["device_id"])
    s.call("GET", "/_matrix/client/v3/account/whoami", token=rotated["access_token"])
    keep("alice_tablet_rotated", rotated)
    # A logout and a deleted device: neither may reach MAS.
    out = s.login("alice", st["passwords"]["alice"], "ALICEOLD", "logged out", False)
    s.call("POST", "/_matrix/client/v3/logout", token=out["access_token"])
    st["gone_tokens"].append(("logged-out token", out["access_token"]))
    gone = s.login("alice", st["passwords"]["alice"], "ALICEGONE", "deleted device", True)
    s.call("DELETE", f"/_synapse/admin/v2/users/{uid('alice')}/devices/ALICEGONE", token=admin["access_token"])
    st["gone_tokens"] += [("deleted device's token", gone["access_token"]),
                          ("deleted device's refresh token", gone["refresh_token"])]

    # Admin API user with an email and a phone number and an SSO (OIDC) external id.
    s.call("PUT", f"/_synapse/admin/v2/users/{uid('carol')}", token=admin["access_token"], expect=201, body={
        "password": password("carol"),
        "displayname": "Carol",
        "threepids": [{"medium": "email", "address": "carol@example.org"},
                      {"medium": "msisdn", "address": "447700900123"}],
        "external_ids": [{"auth_provider": "oidc-google", "external_id": "carol-google-subject"}],
    })
    keep("carol_web", s.login("carol", st["passwords"]["carol"], "CAROLWEB", "Carol's browser", False))

    # A deactivated user (had a session) and a locked one (keeps hers).
    dave = s.register_shared_secret(secret, "dave", password("dave"), admin=False)
    st["gone_tokens"].append(("deactivated user's token", dave["access_token"]))
    s.call("POST", f"/_synapse/admin/v1/deactivate/{uid('dave')}", token=admin["access_token"],
           body={"erase": False})
    erin = s.register_shared_secret(secret, "erin", password("erin"), admin=False)
    keep("erin_registration", erin)
    s.call("PUT", f"/_synapse/admin/v2/users/{uid('erin')}", token=admin["access_token"],
           body={"locked": True})

    # A guest.
    guest = s.call("POST", "/_matrix/client/v3/register?kind=guest", body={})
    st["guest"] = guest["user_id"]
    st["gone_tokens"].append(("guest's token", guest["access_token"]))

    # An admin "login as user" (puppet) token for alice.
    puppet = s.call("POST", f"/_synapse/admin/v1/users/{uid('alice')}/login", token=admin["access_token"], body={})
    st["gone_tokens"].append(("puppet token", puppet["access_token"]))

    # An appservice user.
    bridged = s.call("POST", "/_matrix/client/v3/register", token=os.environ["AS_TOKEN"], body={
        "type": "m.login.application_service", "username": "bridge_alice"})
    st["appservice_user"] = bridged["user_id"]
    if "access_token" in bridged:
        st["gone_tokens"].append(("appservice user's token", bridged["access_token"]))

    fd = os.open(state_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(st, f)
    print(f"created {len(st['passwords'])} password users, a guest, an appservice user, "
          f"{len(st['sessions'])} sessions MAS must hold and {len(st['gone_tokens'])} tokens it must not")


class Checker:
    def __init__(self):
        self.failures = 0
        self.passed = 0

    def ok(self, cond, what):
        if cond:
            self.passed += 1
            print(f"  ok: {what}")
        else:
            self.failures += 1
            print(f"  FAILED: {what}")


def one(cur, sql, *args):
    cur.execute(sql, args)
    return cur.fetchall()


def mask(token):
    return (token or "")[:4] + "…"


def check(state_path):
    with open(state_path) as f:
        st = json.load(f)
    pepper = os.environ["PEPPER"]
    syn = psycopg2.connect(os.environ["SYNAPSE_DSN"]).cursor()
    mas = psycopg2.connect(os.environ["MAS_DSN"]).cursor()
    c = Checker()

    users = {r[0]: r[1:] for r in one(mas, """
        SELECT username, can_request_admin, is_guest, locked_at IS NOT NULL, deactivated_at IS NOT NULL, user_id
          FROM users""")}
    print("users")
    for lp in ("admin", "alice", "carol", "dave", "erin"):
        c.ok(lp in users, f"{lp} is a MAS user")
    c.ok(users.get("admin", (None,))[0] is True, "admin can request admin")
    c.ok(users.get("alice", (None,))[0] is False, "alice cannot request admin")
    c.ok(users.get("erin", (None,) * 3)[2] is True, "erin (locked in Synapse) is locked")
    c.ok(users.get("dave", (None,) * 4)[3] is True, "dave (deactivated in Synapse) is deactivated")
    c.ok(users.get("alice", (None,) * 4)[3] is False and users.get("alice", (None,) * 3)[2] is False,
         "alice is neither locked nor deactivated")
    guest_lp = st["guest"][1:].split(":")[0]
    c.ok(users.get(guest_lp, (None, None))[1] is True, f"the guest ({guest_lp}) is a MAS guest user")
    as_lp = st["appservice_user"][1:].split(":")[0]
    c.ok(as_lp not in users, "the appservice user is not migrated")

    print("passwords")
    for lp, pw in st["passwords"].items():
        syn_hash = one(syn, "SELECT password_hash FROM users WHERE name = %s", uid(lp))[0][0]
        rows = one(mas, """SELECT p.hashed_password, p.version FROM user_passwords p
                            JOIN users u USING (user_id) WHERE u.username = %s""", lp)
        if syn_hash is None:
            c.ok(rows == [], f"{lp}: Synapse has no password hash, MAS has no password")
            continue
        c.ok(len(rows) == 1 and rows[0][0] == syn_hash and rows[0][1] == 1,
             f"{lp}: MAS holds Synapse's bcrypt hash as scheme version 1")
        c.ok(bool(rows) and bcrypt.checkpw((pw + pepper).encode(), rows[0][0].encode()),
             f"{lp}: the password Synapse was given verifies against MAS's hash with the pepper")

    print("emails, phone numbers, SSO links")
    c.ok(one(mas, """SELECT e.email FROM user_emails e JOIN users u USING (user_id) WHERE u.username = 'carol'""")
         == [("carol@example.org",)], "carol's email")
    c.ok(one(mas, """SELECT t.medium, t.address FROM user_unsupported_third_party_ids t
                      JOIN users u USING (user_id) WHERE u.username = 'carol'""")
         == [("msisdn", "447700900123")], "carol's phone number is kept as an unsupported third-party id")
    c.ok(one(mas, """SELECT l.subject, l.upstream_oauth_provider_id::text FROM upstream_oauth_links l
                      JOIN users u USING (user_id) WHERE u.username = 'carol'""")
         == [("carol-google-subject", GOOGLE_PROVIDER_UUID)], "carol's Google link")

    print("sessions and tokens")
    for key, s in st["sessions"].items():
        lp = s["user_id"][1:].split(":")[0]
        sess = one(mas, """SELECT s.compat_session_id, s.finished_at FROM compat_sessions s
                            JOIN users u USING (user_id) WHERE u.username = %s AND s.device_id = %s""",
                   lp, s["device_id"])
        c.ok(len(sess) == 1 and sess[0][1] is None, f"{key}: one open session for device {s['device_id']}")
        if not sess:
            continue
        at = one(mas, """SELECT compat_session_id, extract(epoch FROM expires_at) * 1000
                           FROM compat_access_tokens WHERE access_token = %s""", s["access_token"])
        c.ok(len(at) == 1 and at[0][0] == sess[0][0], f"{key}: access token {mask(s['access_token'])} in that session")
        if s["expires_in_ms"] is None:
            c.ok(bool(at) and at[0][1] is None, f"{key}: the access token does not expire")
        else:
            want = s["at_ms"] + s["expires_in_ms"]
            c.ok(bool(at) and at[0][1] is not None and abs(float(at[0][1]) - want) < 60_000,
                 f"{key}: the access token expires when Synapse said (±1 min)")
        rt = one(mas, "SELECT compat_session_id FROM compat_refresh_tokens WHERE refresh_token = %s",
                 s["refresh_token"]) if s["refresh_token"] else []
        if s["refresh_token"]:
            c.ok(len(rt) == 1 and rt[0][0] == sess[0][0], f"{key}: refresh token {mask(s['refresh_token'])} in that session")
    for what, token in st["gone_tokens"]:
        n = one(mas, """SELECT (SELECT count(*) FROM compat_access_tokens WHERE access_token = %s)
                             + (SELECT count(*) FROM compat_refresh_tokens WHERE refresh_token = %s)""", token, token)
        c.ok(n == [(0,)], f"{what} {mask(token)} is not in MAS")
    for lp, dev in (("alice", "ALICEOLD"), ("alice", "ALICEGONE")):
        c.ok(one(mas, """SELECT count(*) FROM compat_sessions s JOIN users u USING (user_id)
                          WHERE u.username = %s AND s.device_id = %s""", lp, dev) == [(0,)],
             f"{lp}'s {dev} (logged out / deleted) has no session")
    c.ok(one(mas, """SELECT count(*) FROM compat_sessions s JOIN users u USING (user_id)
                      WHERE u.username IN ('dave', %s)""", guest_lp) == [(0,)],
         "the deactivated user and the guest have no sessions")
    # The only deviceless token made above is the puppet token, which is skipped.
    c.ok(one(mas, "SELECT count(*) FROM compat_sessions WHERE device_id IS NULL") == [(0,)],
         "no deviceless session (the puppet token was the only deviceless token)")

    print(f"{c.passed} assertions passed, {c.failures} failed")
    return 1 if c.failures else 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("create", "assert"):
        raise SystemExit(__doc__)
    if sys.argv[1] == "create":
        create(sys.argv[2])
    else:
        sys.exit(check(sys.argv[2]))
