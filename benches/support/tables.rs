//! What each loaded Synapse table looks like, and how one row of it is written.

use super::copybuf::{CopyBuf, push_int, push_padded};
use super::encode::{BCRYPT64, LETTERS, base62, base64, base64_url, crc32};
use super::model::{Kind, NOW_MS, SERVER_NAME, User, stream};
use super::plan::{AccessToken, Device, DeviceId, RefreshToken};
use super::rng::Rng;

pub struct TableSpec {
    pub name: &'static str,
    /// Every column the generator writes, in row order.
    pub columns: &'static [&'static str],
    /// Columns syn2mas reads: the schema must have them.
    pub required: &'static [&'static str],
}

pub const USERS: TableSpec = TableSpec {
    name: "users",
    columns: &[
        "name",
        "password_hash",
        "creation_ts",
        "admin",
        "upgrade_ts",
        "is_guest",
        "appservice_id",
        "consent_version",
        "consent_server_notice_sent",
        "user_type",
        "deactivated",
        "shadow_banned",
        "consent_ts",
        "approved",
        "locked",
        "suspended",
    ],
    required: &[
        "name",
        "password_hash",
        "creation_ts",
        "admin",
        "is_guest",
        "appservice_id",
        "deactivated",
        "locked",
    ],
};

pub const THREEPIDS: TableSpec = TableSpec {
    name: "user_threepids",
    columns: &["user_id", "medium", "address", "validated_at", "added_at"],
    required: &["user_id", "medium", "address", "added_at"],
};

pub const EXTERNAL_IDS: TableSpec = TableSpec {
    name: "user_external_ids",
    columns: &["auth_provider", "external_id", "user_id"],
    required: &["auth_provider", "external_id", "user_id"],
};

pub const DEVICES: TableSpec = TableSpec {
    name: "devices",
    columns: &[
        "user_id",
        "device_id",
        "display_name",
        "last_seen",
        "ip",
        "user_agent",
        "hidden",
    ],
    required: &[
        "user_id",
        "device_id",
        "display_name",
        "last_seen",
        "ip",
        "user_agent",
        "hidden",
    ],
};

pub const ACCESS_TOKENS: TableSpec = TableSpec {
    name: "access_tokens",
    columns: &[
        "id",
        "user_id",
        "device_id",
        "token",
        "valid_until_ms",
        "puppets_user_id",
        "last_validated",
        "refresh_token_id",
        "used",
    ],
    required: &[
        "id",
        "user_id",
        "device_id",
        "token",
        "valid_until_ms",
        "puppets_user_id",
        "last_validated",
        "refresh_token_id",
        "used",
    ],
};

pub const REFRESH_TOKENS: TableSpec = TableSpec {
    name: "refresh_tokens",
    columns: &[
        "id",
        "user_id",
        "device_id",
        "token",
        "next_token_id",
        "expiry_ts",
        "ultimate_session_expiry_ts",
    ],
    required: &["id", "user_id", "device_id", "token", "next_token_id"],
};

pub const ALL: [&TableSpec; 6] = [
    &USERS,
    &THREEPIDS,
    &EXTERNAL_IDS,
    &DEVICES,
    &ACCESS_TOKENS,
    &REFRESH_TOKENS,
];

const DAY_MS: i64 = 86_400_000;
const EMAIL_DOMAINS: &[&str] = &[
    "gmail.com",
    "example.org",
    "proton.me",
    "outlook.com",
    "posteo.de",
    "uni-bench.edu",
];
const CALLING_CODES: &[u64] = &[44, 49, 33, 31, 46, 61, 34, 39];

pub fn user_row(seed: u64, user: &User, out: &mut CopyBuf) {
    out.with(|b| user.push_user_id(b));
    if user.password {
        let mut rng = Rng::new(seed, stream::PASSWORD, u64::from(user.index));
        out.with(|b| {
            b.extend_from_slice(b"$2b$12$");
            rng.push_chars(b, BCRYPT64, 53);
        });
    } else {
        out.null();
    }
    out.int(user.creation_s);
    out.int(i64::from(user.admin));
    out.null();
    out.int(i64::from(user.kind == Kind::Guest));
    out.opt_text(user.appservice_id);
    out.null();
    out.null();
    out.null();
    out.int(i64::from(user.deactivated));
    out.null();
    out.null();
    out.opt_bool(user.approved());
    out.bool(user.locked);
    out.bool(false);
    out.end_row();
}

/// Emails (unique: they embed the unique localpart) and the odd phone number.
pub fn threepid_rows(seed: u64, user: &User, out: &mut CopyBuf) {
    let mut rng = Rng::new(seed, stream::THREEPID, u64::from(user.index));
    let (primary, second, phone) = match user.kind {
        Kind::Regular if user.deactivated => (0.1, 0.0, 0.0),
        Kind::Regular => (0.90, 0.04, 0.0285),
        Kind::Appservice => (0.01, 0.0, 0.0),
        Kind::Guest | Kind::AppserviceColon => return,
    };
    if rng.chance(primary) {
        let domain = *rng.pick(EMAIL_DOMAINS);
        let mixed_case = rng.chance(0.005);
        let address = email(&user.localpart, "", domain, mixed_case);
        threepid_row(&mut rng, user, "email", &address, out);
    }
    if rng.chance(second) {
        let address = email(&user.localpart, ".work", "corp.example.net", false);
        threepid_row(&mut rng, user, "email", &address, out);
    }
    if rng.chance(phone) {
        let mut digits = Vec::with_capacity(12);
        push_int(&mut digits, *rng.pick(CALLING_CODES) as i64);
        push_padded(&mut digits, u64::from(user.index), 10);
        let address = String::from_utf8(digits).unwrap_or_default();
        threepid_row(&mut rng, user, "msisdn", &address, out);
    }
}

fn email(localpart: &str, suffix: &str, domain: &str, mixed_case: bool) -> String {
    let local = if mixed_case {
        localpart.to_string()
    } else {
        localpart.to_ascii_lowercase()
    };
    format!("{local}{suffix}@{domain}")
}

fn threepid_row(rng: &mut Rng, user: &User, medium: &str, address: &str, out: &mut CopyBuf) {
    let added = rng.range(
        user.creation_ms(),
        (user.creation_ms() + 30 * DAY_MS).min(NOW_MS),
    );
    out.with(|b| user.push_user_id(b));
    out.text(medium);
    out.text(address);
    out.int(added - rng.range(0, 600_000));
    out.int(added);
    out.end_row();
}

/// Mostly Google subjects (21 digits), some GitLab ids; a few users have both.
pub fn external_id_rows(seed: u64, user: &User, out: &mut CopyBuf) {
    if user.kind != Kind::Regular {
        return;
    }
    let mut rng = Rng::new(seed, stream::EXTERNAL_ID, u64::from(user.index));
    if !rng.chance(0.10) {
        return;
    }
    let both = rng.chance(0.02);
    let google = both || rng.chance(0.95);
    if google {
        out.text("oidc-google");
        out.with(|b| {
            b.push(b'1');
            push_padded(b, rng.below(10_000_000_000), 10);
            push_padded(b, u64::from(user.index), 10);
        });
        out.with(|b| user.push_user_id(b));
        out.end_row();
    }
    if both || !google {
        out.text("oidc-gitlab");
        out.with(|b| {
            push_int(
                b,
                1_000_000 + i64::from(user.index) * 3 + rng.below(3) as i64,
            )
        });
        out.with(|b| user.push_user_id(b));
        out.end_row();
    }
}

const DISPLAY_NAMES: &[&str] = &[
    "Element Android",
    "Element iOS",
    "Element Desktop: Linux",
    "Element Desktop: macOS",
    "Element Desktop: Windows",
    "app.element.io: Firefox on Linux",
    "app.element.io: Chrome on Windows",
    "FluffyChat Android",
    "Nheko",
    "SchildiChat",
    "Cinny",
    "bench bot",
    "iPhone von Anna",
];
const USER_AGENTS: &[&str] = &[
    "Element/1.11.30 (Linux; U; Android 13; Pixel 7 Build/TQ3A.230805.001; Flavour GooglePlay; MatrixAndroidSdk2 1.6.5)",
    "Element/1.11.30 (iPhone; iOS 17.0; Scale/3.00)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Element/1.11.40 Chrome/116.0.5845.190 Electron/26.2.4 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:118.0) Gecko/20100101 Firefox/118.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Safari/605.1.15",
    "FluffyChat/1.14.1 (Android 14)",
    "mautrix-go/v0.16.0",
    "python-requests/2.31.0",
];
const CROSS_SIGNING: [&str; 3] = [
    "master signing key",
    "self_signing signing key",
    "user_signing signing key",
];

pub fn device_row(seed: u64, device: &Device, user: &User, out: &mut CopyBuf) {
    let mut rng = Rng::new(seed, stream::DEVICE_ROW, device.seed);
    out.with(|b| user.push_user_id(b));
    match device.id {
        DeviceId::CrossSigning(key) => {
            let mut public_key = [0u8; 32];
            public_key
                .iter_mut()
                .for_each(|x| *x = rng.next_u64() as u8);
            out.with(|b| base64(b, &public_key));
            out.text(CROSS_SIGNING[usize::from(key)]);
            out.null();
            out.null();
            out.null();
            out.bool(true);
        }
        DeviceId::Letters(id) => {
            out.with(|b| b.extend_from_slice(&id));
            visible_device_fields(&mut rng, device, out);
        }
        DeviceId::Guest => {
            out.text("guest_device");
            visible_device_fields(&mut rng, device, out);
        }
    }
    out.end_row();
}

fn visible_device_fields(rng: &mut Rng, device: &Device, out: &mut CopyBuf) {
    let name = (!rng.chance(0.04)).then(|| *rng.pick(DISPLAY_NAMES));
    out.opt_text(name);
    let last_seen = (!rng.chance(0.05)).then(|| rng.range(device.t_ms, NOW_MS));
    out.opt_int(last_seen);
    if last_seen.is_some() {
        ip_field(rng, out);
        let user_agent: &&str = rng.pick(USER_AGENTS);
        out.text(user_agent);
    } else {
        out.null();
        out.null();
    }
    out.bool(false);
}

/// Mostly IPv4, some IPv6 and IPv4-mapped, rarely `-` or a misconfigured proxy's list.
fn ip_field(rng: &mut Rng, out: &mut CopyBuf) {
    let r = rng.unit();
    let v = rng.next_u64();
    let o = |k: u32| (v >> (8 * k)) as u8;
    let text = if r < 0.80 {
        format!("{}.{}.{}.{}", o(0) % 223 + 1, o(1), o(2), o(3))
    } else if r < 0.92 {
        format!(
            "2001:db8:{:x}:{:x}::{:x}",
            v & 0xffff,
            (v >> 16) & 0xffff,
            (v >> 32) & 0xffff
        )
    } else if r < 0.96 {
        format!("::ffff:{}.{}.{}.{}", o(0) % 223 + 1, o(1), o(2), o(3))
    } else if r < 0.999 {
        "-".to_string()
    } else {
        format!("10.0.{}.{}, 192.0.2.{}", o(1), o(2), o(3))
    };
    out.text(&text);
}

pub fn access_token_row(
    seed: u64,
    id: i64,
    token: &AccessToken,
    user: &User,
    puppet: Option<&User>,
    out: &mut CopyBuf,
) {
    let mut rng = Rng::new(seed, stream::TOKEN_ROW, token.seed);
    out.int(id);
    out.with(|b| user.push_user_id(b));
    match token.device {
        Some(d) => out.with(|b| b.extend_from_slice(&d)),
        None => out.null(),
    }
    if token.macaroon {
        out.with(|b| macaroon(&mut rng, user, b));
    } else {
        out.with(|b| synapse_token(&mut rng, "syt", user, b));
    }
    out.opt_int(token.valid_until);
    match puppet {
        Some(admin) => out.with(|b| admin.push_user_id(b)),
        None => out.null(),
    }
    let unvalidated = token.macaroon && rng.chance(0.3);
    out.opt_int((!unvalidated).then_some(token.t_ms));
    out.opt_int(token.refresh.map(|r| i64::from(r) + 1));
    out.opt_bool(token.used);
    out.end_row();
}

pub fn refresh_token_row(seed: u64, id: i64, token: &RefreshToken, user: &User, out: &mut CopyBuf) {
    let mut rng = Rng::new(seed, stream::REFRESH_ROW, token.seed);
    out.int(id);
    out.with(|b| user.push_user_id(b));
    out.with(|b| b.extend_from_slice(&token.device));
    out.with(|b| synapse_token(&mut rng, "syr", user, b));
    out.opt_int(token.next.map(|n| i64::from(n) + 1));
    let expiry = rng.chance(0.2).then_some(token.t_ms + 30 * DAY_MS);
    out.opt_int(expiry);
    out.null();
    out.end_row();
}

/// `<prefix>_<base64 localpart>_<20 letters>_<base62 crc32 of the rest>`.
fn synapse_token(rng: &mut Rng, prefix: &str, user: &User, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(prefix.as_bytes());
    out.push(b'_');
    base64(out, user.localpart.as_bytes());
    out.push(b'_');
    rng.push_chars(out, LETTERS, 20);
    let crc = crc32(&out[start..]);
    out.push(b'_');
    base62(out, u64::from(crc), 6);
}

/// A pymacaroons v1 serialisation: base64url of `location`, `identifier`, caveats, signature.
fn macaroon(rng: &mut Rng, user: &User, out: &mut Vec<u8>) {
    let mut packets = Vec::with_capacity(256);
    packet(&mut packets, format!("location {SERVER_NAME}").as_bytes());
    packet(&mut packets, b"identifier key");
    packet(&mut packets, b"cid gen = 1");
    let mut user_id = Vec::with_capacity(64);
    user.push_user_id(&mut user_id);
    let mut caveat = b"cid user_id = ".to_vec();
    caveat.extend_from_slice(&user_id);
    packet(&mut packets, &caveat);
    packet(&mut packets, b"cid type = access");
    let mut nonce = b"cid nonce = ".to_vec();
    rng.push_chars(&mut nonce, LETTERS, 16);
    packet(&mut packets, &nonce);
    let mut signature = b"signature ".to_vec();
    signature.extend((0..32).map(|_| rng.next_u64() as u8));
    packet(&mut packets, &signature);
    base64_url(out, &packets);
}

/// One macaroon packet: 4 hex digits of total length, the content, a newline.
fn packet(out: &mut Vec<u8>, content: &[u8]) {
    let len = content.len() + 5;
    out.extend_from_slice(format!("{len:04x}").as_bytes());
    out.extend_from_slice(content);
    out.push(b'\n');
}
