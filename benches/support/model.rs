//! The synthetic population: who the users are. Every attribute of user `i` is a pure function of
//! `(seed, i, total)`, so each table's generator recomputes the users it needs instead of sharing
//! state.

use super::rng::Rng;

pub const SERVER_NAME: &str = "bench.example.com";
/// 2016-01-01T00:00:00Z: the first registration.
pub const START_S: i64 = 1_451_606_400;
/// 2026-10-01T00:00:00Z: "now" for every generated timestamp.
pub const NOW_S: i64 = 1_790_812_800;
pub const NOW_MS: i64 = NOW_S * 1000;
/// 2021-06-01: `access_tokens.used` exists from here on (older rows have NULL).
pub const USED_EPOCH_MS: i64 = 1_622_505_600_000;
/// 2021-07-01: refresh tokens exist from here on.
pub const REFRESH_EPOCH_MS: i64 = 1_625_097_600_000;
/// 2023-01-01: `users.approved` is written from here on.
const APPROVED_EPOCH_S: i64 = 1_672_531_200;

/// Randomness streams, one per purpose, so adding a draw in one table never shifts another.
pub mod stream {
    pub const USER: u64 = 1;
    pub const PASSWORD: u64 = 2;
    pub const THREEPID: u64 = 3;
    pub const EXTERNAL_ID: u64 = 4;
    pub const DEVICES: u64 = 5;
    pub const DEVICE_ROW: u64 = 6;
    pub const TOKEN_ROW: u64 = 7;
    pub const REFRESH_ROW: u64 = 8;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Regular,
    Guest,
    Appservice,
    /// An appservice user with an extra `:` in the localpart (syn2mas ignores it; it must have
    /// no dependent rows or the migration would fail).
    AppserviceColon,
}

#[derive(Clone, Debug)]
pub struct User {
    pub index: u32,
    pub localpart: String,
    pub kind: Kind,
    pub creation_s: i64,
    pub admin: bool,
    pub locked: bool,
    pub deactivated: bool,
    pub password: bool,
    pub appservice_id: Option<&'static str>,
}

const FIRST: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yusuf", "zoe",
    "amara", "bjorn", "chen", "dmitri", "elif", "fatima", "giulia", "hiro", "ines", "jonas",
    "kwame", "lena", "mateo", "noor", "oskar", "priya", "quentin", "rosa", "sven",
];
const LAST: &[&str] = &[
    "smith", "jones", "garcia", "muller", "rossi", "dubois", "tanaka", "kim", "nguyen", "silva",
    "kowalski", "novak", "jensen", "olsen", "ivanov", "schmidt", "moreau", "bianchi", "lopez",
    "wang", "ali", "khan", "sato", "berg", "hansen", "costa", "weber", "fischer", "meyer", "roux",
];
const NICK: &[&str] = &[
    "pixel", "nebula", "falcon", "quark", "otter", "cobalt", "ember", "lynx", "maple", "orbit",
    "raven", "sprocket", "tundra", "vortex", "willow", "zephyr",
];
const APPSERVICES: &[&str] = &["irc", "telegram", "whatsapp", "signal", "slack"];

impl User {
    /// User `index` of a population of `total`. Users are numbered in registration order.
    pub fn generate(seed: u64, index: u32, total: u32) -> User {
        Self::build(seed, index, total, true)
    }

    /// The same user with an empty localpart: all the planner needs, without formatting a name.
    pub fn attributes(seed: u64, index: u32, total: u32) -> User {
        Self::build(seed, index, total, false)
    }

    fn build(seed: u64, index: u32, total: u32, named: bool) -> User {
        let mut rng = Rng::new(seed, stream::USER, u64::from(index));
        let slot = (NOW_S - 86_400 - START_S) / i64::from(total.max(1));
        let creation_s = START_S + i64::from(index) * slot + rng.range(0, slot.max(1));
        let roll = rng.unit();
        let kind = if roll < 0.01 {
            if rng.chance(0.03) {
                Kind::AppserviceColon
            } else {
                Kind::Appservice
            }
        } else if roll < 0.015 {
            Kind::Guest
        } else {
            Kind::Regular
        };
        let regular = kind == Kind::Regular;
        let deactivated = regular && rng.chance(0.0305);
        let locked = regular && rng.chance(0.001_02);
        let admin = regular && !deactivated && rng.chance(0.000_52);
        let password = regular && !deactivated && rng.chance(0.89);
        let appservice_id = match kind {
            Kind::Appservice => Some(*rng.pick(APPSERVICES)),
            Kind::AppserviceColon => Some("xmpp"),
            Kind::Regular | Kind::Guest => None,
        };
        let localpart = if named {
            localpart(&mut rng, kind, appservice_id, index, creation_s)
        } else {
            String::new()
        };
        User {
            index,
            localpart,
            kind,
            creation_s,
            admin,
            locked,
            deactivated,
            password,
            appservice_id,
        }
    }

    /// Regular, not deactivated: the users who log in and own devices and tokens.
    pub fn is_active(&self) -> bool {
        self.kind == Kind::Regular && !self.deactivated
    }

    pub fn push_user_id(&self, out: &mut Vec<u8>) {
        out.push(b'@');
        out.extend_from_slice(self.localpart.as_bytes());
        out.push(b':');
        out.extend_from_slice(SERVER_NAME.as_bytes());
    }

    pub fn creation_ms(&self) -> i64 {
        self.creation_s * 1000
    }

    pub fn approved(&self) -> Option<bool> {
        (self.creation_s >= APPROVED_EPOCH_S).then_some(true)
    }
}

fn localpart(
    rng: &mut Rng,
    kind: Kind,
    appservice_id: Option<&str>,
    index: u32,
    creation_s: i64,
) -> String {
    let bridge = appservice_id.unwrap_or("bridge");
    match kind {
        Kind::Guest => (u64::from(index) + 1).to_string(),
        Kind::Appservice => format!("_{bridge}_{}{index}", rng.pick(NICK)),
        Kind::AppserviceColon => format!("_{bridge}_{}{index}:jabber.org", rng.pick(NICK)),
        Kind::Regular => regular_localpart(rng, index, creation_s),
    }
}

/// Unique because every pattern ends with (or embeds) the index after a non-digit.
fn regular_localpart(rng: &mut Rng, index: u32, creation_s: i64) -> String {
    let first = *rng.pick(FIRST);
    let last = *rng.pick(LAST);
    let roll = rng.unit();
    let name = if roll < 0.45 {
        format!("{first}.{last}{index}")
    } else if roll < 0.70 {
        format!("{first}{index}")
    } else if roll < 0.85 {
        format!("{}_{index}", rng.pick(NICK))
    } else if roll < 0.95 {
        format!("{first}-{last}-{index}")
    } else {
        format!("{first}={last}/{index}")
    };
    // Registrations before 2018 were not lower-cased.
    if creation_s < 1_514_764_800 && rng.chance(0.01) {
        let mut chars = name.chars();
        let head = chars.next().map(|c| c.to_ascii_uppercase()).unwrap_or('x');
        return std::iter::once(head).chain(chars).collect();
    }
    name
}
