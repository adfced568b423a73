//! Property test on generated Synapse databases: random rows within what Synapse's schema
//! allows (NULLs where nullable, any text incl. control characters and 4-byte emoji, 64 KiB
//! display names and user agents, timestamps 0 / negative / year 3000 / i64 extremes,
//! duplicate and dangling references, several server names) are inserted with parameterised
//! queries into an empty Synapse database; then, through the real binary:
//!
//! * `check` never panics and exits 0, 10 or 11;
//! * `check` flags everything `migrate` would reject: when it passes (0 or 11),
//!   `migrate --allow-warnings` succeeds, every entity has read = migrated + skipped, the plan
//!   of `check` is what `migrate` did (per table and skip reason, and per MAS table), and MAS holds exactly the rows the summary reports;
//! * when `check` or `migrate` refuses or fails, MAS is unchanged (no row, no shadow table).
//!
//! Half the cases are "clean" (only rows a healthy Synapse has, so `migrate` really runs) and
//! half "hostile". Cases are few and databases small, so this stays within a CI budget
//! (64 cases by default; `SYN2MAS_PROPTEST_CASES` overrides the count). A failure prints the
//! generated rows.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Output, Stdio};

use common::{Schema, TestDb, syn2mas_bin, write_configs};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// The MAS `matrix.homeserver` of the fixture configs.
const SERVER: &str = "example.com";

const TARGETS: [&str; 8] = syn2mas::sink::tables::NAMES;

// ------------------------------------------------------------------------------------------------
// What is generated
// ------------------------------------------------------------------------------------------------

/// Who a dependent row belongs to.
#[derive(Debug, Clone)]
enum Owner {
    /// One of the generated users (by index, among those with a name).
    User(Index),
    /// A user id with no `users` row.
    Dangling(String),
}

#[derive(Debug, Clone)]
struct UserSpec {
    /// (localpart, server name); `None` is a NULL `name`.
    name: Option<(String, String)>,
    password_hash: Option<String>,
    creation_ts: Option<i64>,
    admin: i16,
    is_guest: i16,
    appservice_id: Option<String>,
    deactivated: i16,
    locked: bool,
    shadow_banned: Option<bool>,
}

#[derive(Debug, Clone)]
struct ThreepidSpec {
    owner: Owner,
    medium: String,
    address: String,
    validated_at: i64,
    added_at: i64,
}

#[derive(Debug, Clone)]
struct ExternalIdSpec {
    owner: Owner,
    auth_provider: String,
    external_id: String,
}

#[derive(Debug, Clone)]
struct DeviceSpec {
    owner: Owner,
    device_id: String,
    display_name: Option<String>,
    last_seen: Option<i64>,
    ip: Option<String>,
    user_agent: Option<String>,
    hidden: Option<bool>,
}

/// A device a token names.
#[derive(Debug, Clone)]
enum DeviceRef {
    /// One of the generated devices.
    Device(Index),
    /// A device id with no `devices` row, for this owner.
    Dangling(Owner, String),
}

#[derive(Debug, Clone)]
struct RefreshSpec {
    device: DeviceRef,
    token: String,
    /// An earlier refresh token (Synapse's foreign key allows only existing ones).
    next: Option<Index>,
    expiry_ts: Option<i64>,
    ultimate_session_expiry_ts: Option<i64>,
}

#[derive(Debug, Clone)]
struct AccessSpec {
    /// Owner of a deviceless token; ignored when `device` is set (the device's owner is used).
    owner: Owner,
    device: Option<DeviceRef>,
    token: String,
    valid_until_ms: Option<i64>,
    puppets_user_id: Option<Owner>,
    last_validated: Option<i64>,
    refresh: Option<Index>,
    used: Option<bool>,
}

#[derive(Debug, Clone)]
struct Case {
    /// `clean`, `one bad row` (a clean case plus one hostile row) or `hostile`.
    mode: &'static str,
    /// Whether rows are generated as a healthy Synapse writes them (an access token of a
    /// refresh token has that token's user and device).
    clean: bool,
    ignore_missing_auth_providers: bool,
    users: Vec<UserSpec>,
    threepids: Vec<ThreepidSpec>,
    external_ids: Vec<ExternalIdSpec>,
    devices: Vec<DeviceSpec>,
    refresh_tokens: Vec<RefreshSpec>,
    access_tokens: Vec<AccessSpec>,
}

// ------------------------------------------------------------------------------------------------
// Strategies
// ------------------------------------------------------------------------------------------------

/// Any Unicode scalar PostgreSQL text can hold (not NUL), control characters and 4-byte
/// characters well represented.
fn any_char() -> impl Strategy<Value = char> + Clone {
    prop_oneof![
        4 => any::<char>().prop_filter("no NUL in PostgreSQL text", |c| *c != '\0'),
        1 => (1u32..0x20).prop_map(|c| char::from_u32(c).unwrap()),
        1 => prop::sample::select(vec!['😀', '𝄞', '\u{10FFFF}', '\u{FEFF}', '\u{202E}', 'é']),
        2 => prop::sample::select(vec!['\'', '"', '\\', '%', '_', ';', ' ', '\n', '\t']),
    ]
}

fn short_text(max: usize) -> impl Strategy<Value = String> + Clone {
    prop::collection::vec(any_char(), 0..max).prop_map(|v| v.into_iter().collect())
}

/// Text for columns without an index: short, or a 64 KiB run.
fn long_text() -> impl Strategy<Value = String> + Clone {
    prop_oneof![
        6 => short_text(30),
        1 => (any_char(), 60_000usize..66_000).prop_map(|(c, n)| std::iter::repeat_n(c, n).collect()),
        1 => short_text(30).prop_map(|s| s.repeat(2200).chars().take(65_536).collect()),
    ]
}

/// A localpart; clean ones are non-empty and have no `:`.
fn localpart(clean: bool) -> BoxedStrategy<String> {
    let ok = prop_oneof![
        3 => "[a-z0-9._=/-]{1,10}",
        2 => short_text(12).prop_map(|s| s.replace(':', "")).prop_filter("non-empty", |s| !s.is_empty()),
        1 => prop::sample::select(vec!["o'brien", "100%_sure", "back\\slash", "😀", "DROP TABLE users;--", "MixedCase"]).prop_map(str::to_owned),
    ];
    if clean {
        ok.boxed()
    } else {
        prop_oneof![
            6 => ok,
            1 => prop::sample::select(vec!["", "a:b", ":", "irc_a:b"]).prop_map(str::to_owned),
            1 => short_text(12),
        ]
        .boxed()
    }
}

/// A server name; clean ones are the MAS homeserver.
fn server_name(clean: bool) -> BoxedStrategy<String> {
    if clean {
        Just(SERVER.to_owned()).boxed()
    } else {
        prop_oneof![
            8 => Just(SERVER.to_owned()),
            1 => prop::sample::select(vec![
                "other.example", "example.com:8448", "EXAMPLE.COM", "exampleXcom", "", "%", "example.co_",
            ]).prop_map(str::to_owned),
            1 => short_text(10),
        ]
        .boxed()
    }
}

/// Unix milliseconds: ordinary times, the edges PostgreSQL accepts, and (hostile) values it
/// cannot store.
fn millis(clean: bool) -> BoxedStrategy<i64> {
    let ok = prop_oneof![
        6 => 1_500_000_000_000i64..1_800_000_000_000,
        1 => Just(0i64),
        1 => Just(-1i64),
        1 => Just(-62_000_000_000_000i64),
        1 => Just(32_503_680_000_000i64),
    ];
    if clean {
        ok.boxed()
    } else {
        prop_oneof![
            8 => ok,
            1 => prop::sample::select(vec![i64::MAX, i64::MIN, i64::MAX / 2, -300_000_000_000_000_000]),
            1 => any::<i64>(),
        ]
        .boxed()
    }
}

/// Unix seconds (`users.creation_ts`).
fn seconds(clean: bool) -> BoxedStrategy<i64> {
    let ok = prop_oneof![
        6 => 1_500_000_000i64..1_800_000_000,
        1 => Just(0i64),
        1 => Just(-1i64),
        1 => Just(32_503_680_000i64),
    ];
    if clean {
        ok.boxed()
    } else {
        prop_oneof![
            8 => ok,
            1 => prop::sample::select(vec![i64::MAX, i64::MIN, 9_300_000_000_000, -300_000_000_000_000]),
            1 => any::<i64>(),
        ]
        .boxed()
    }
}

fn maybe<T: std::fmt::Debug + Clone + 'static>(
    s: impl Strategy<Value = T> + 'static,
) -> BoxedStrategy<Option<T>> {
    prop_oneof![1 => Just(None), 3 => s.prop_map(Some)].boxed()
}

fn owner(clean: bool) -> BoxedStrategy<Owner> {
    let user = any::<Index>().prop_map(Owner::User);
    if clean {
        user.boxed()
    } else {
        prop_oneof![
            6 => user,
            1 => (localpart(false), server_name(false)).prop_map(|(l, s)| Owner::Dangling(format!("@{l}:{s}"))),
            1 => short_text(12).prop_map(Owner::Dangling),
        ]
        .boxed()
    }
}

fn user(clean: bool) -> BoxedStrategy<UserSpec> {
    let name = (localpart(clean), server_name(clean));
    let name = if clean {
        name.prop_map(Some).boxed()
    } else {
        prop_oneof![9 => name.prop_map(Some), 1 => Just(None)].boxed()
    };
    let creation_ts = if clean {
        seconds(true).prop_map(Some).boxed()
    } else {
        prop_oneof![9 => seconds(false).prop_map(Some), 1 => Just(None)].boxed()
    };
    let hash = maybe(prop_oneof![
        3 => "\\$2[aby]\\$1[0-4]\\$[./A-Za-z0-9]{53}",
        1 => long_text(),
    ]);
    let appservice = prop_oneof![5 => Just(None), 1 => short_text(8).prop_map(Some)];
    let flag = prop_oneof![6 => Just(0i16), 2 => Just(1i16), 1 => any::<i16>()];
    (
        name,
        hash,
        creation_ts,
        flag.clone(),
        prop_oneof![6 => Just(0i16), 1 => Just(1i16)],
        appservice,
        flag,
        any::<bool>(),
        maybe(any::<bool>()),
    )
        .prop_map(
            |(
                name,
                password_hash,
                creation_ts,
                admin,
                is_guest,
                appservice_id,
                deactivated,
                locked,
                shadow_banned,
            )| UserSpec {
                name,
                password_hash,
                creation_ts,
                admin,
                is_guest,
                appservice_id,
                deactivated,
                locked,
                shadow_banned,
            },
        )
        .boxed()
}

fn threepid(clean: bool) -> BoxedStrategy<ThreepidSpec> {
    let medium = prop_oneof![
        4 => Just("email".to_owned()),
        2 => Just("msisdn".to_owned()),
        1 => short_text(8),
    ];
    (
        owner(clean),
        medium,
        short_text(40),
        millis(clean),
        millis(clean),
    )
        .prop_map(
            |(owner, medium, address, validated_at, added_at)| ThreepidSpec {
                owner,
                medium,
                address,
                validated_at,
                added_at,
            },
        )
        .boxed()
}

fn external_id(clean: bool) -> BoxedStrategy<ExternalIdSpec> {
    let provider = if clean {
        Just("oidc-google".to_owned()).boxed()
    } else {
        prop_oneof![
            6 => Just("oidc-google".to_owned()),
            1 => prop::sample::select(vec!["oidc-github", "oauth-delegated", "saml", "cas", "oidc", "oidc-go'ogle%"]).prop_map(str::to_owned),
            1 => short_text(10),
        ]
        .boxed()
    };
    (owner(clean), provider, short_text(40))
        .prop_map(|(owner, auth_provider, external_id)| ExternalIdSpec {
            owner,
            auth_provider,
            external_id,
        })
        .boxed()
}

fn ip() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some("-".to_owned())),
        1 => Just(Some(String::new())),
        3 => any::<[u8; 4]>().prop_map(|b| Some(std::net::Ipv4Addr::from(b).to_string())),
        2 => any::<[u8; 16]>().prop_map(|b| Some(std::net::Ipv6Addr::from(b).to_string())),
        1 => Just(Some("::ffff:1.2.3.4".to_owned())),
        1 => Just(Some(" 10.0.0.1 ".to_owned())),
        1 => Just(Some("10.0.0.1, 192.168.1.1".to_owned())),
        2 => long_text().prop_map(Some),
    ]
}

fn device(clean: bool) -> BoxedStrategy<DeviceSpec> {
    let device_id = prop_oneof![
        4 => "[A-Z]{4,10}",
        1 => Just("guest_device".to_owned()),
        2 => short_text(16),
    ];
    let last_seen = maybe(millis(clean));
    let hidden = prop_oneof![6 => Just(Some(false)), 1 => Just(Some(true)), 1 => Just(None)];
    (
        owner(clean),
        device_id,
        maybe(long_text()),
        last_seen,
        ip(),
        maybe(long_text()),
        hidden,
    )
        .prop_map(
            |(owner, device_id, display_name, last_seen, ip, user_agent, hidden)| DeviceSpec {
                owner,
                device_id,
                display_name,
                last_seen,
                ip,
                user_agent,
                hidden,
            },
        )
        .boxed()
}

fn device_ref(clean: bool) -> BoxedStrategy<DeviceRef> {
    let known = any::<Index>().prop_map(DeviceRef::Device);
    prop_oneof![
        6 => known,
        1 => (owner(clean), "[A-Z]{4,8}").prop_map(|(o, d)| DeviceRef::Dangling(o, d)),
    ]
    .boxed()
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "syt_[A-Za-z0-9]{10}_[A-Za-z0-9]{6}",
        1 => "MDAx[A-Za-z0-9+/=]{30}",
        1 => short_text(30),
    ]
}

fn refresh(clean: bool) -> BoxedStrategy<RefreshSpec> {
    (
        device_ref(clean),
        token(),
        maybe(any::<Index>()),
        maybe(millis(clean)),
        maybe(millis(clean)),
    )
        .prop_map(
            |(device, token, next, expiry_ts, ultimate_session_expiry_ts)| RefreshSpec {
                device,
                token,
                next,
                expiry_ts,
                ultimate_session_expiry_ts,
            },
        )
        .boxed()
}

fn access(clean: bool) -> BoxedStrategy<AccessSpec> {
    let device = prop_oneof![1 => Just(None), 3 => device_ref(clean).prop_map(Some)];
    let puppet = prop_oneof![8 => Just(None), 1 => owner(clean).prop_map(Some)];
    let refresh = prop_oneof![2 => Just(None), 1 => any::<Index>().prop_map(Some)];
    (
        owner(clean),
        device,
        token(),
        maybe(millis(clean)),
        puppet,
        maybe(millis(clean)),
        refresh,
        maybe(any::<bool>()),
    )
        .prop_map(
            |(
                owner,
                device,
                token,
                valid_until_ms,
                puppets_user_id,
                last_validated,
                refresh,
                used,
            )| AccessSpec {
                owner,
                device,
                token,
                valid_until_ms,
                puppets_user_id,
                last_validated,
                refresh,
                used,
            },
        )
        .boxed()
}

fn rows_of(clean: bool) -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        prop::collection::vec(user(clean), 1..7),
        prop::collection::vec(threepid(clean), 0..5),
        prop::collection::vec(external_id(clean), 0..4),
        prop::collection::vec(device(clean), 0..6),
        prop::collection::vec(refresh(clean), 0..4),
        prop::collection::vec(access(clean), 0..8),
    )
        .prop_map(
            move |(
                ignore,
                users,
                threepids,
                external_ids,
                devices,
                refresh_tokens,
                access_tokens,
            )| {
                Case {
                    mode: if clean { "clean" } else { "hostile" },
                    clean,
                    ignore_missing_auth_providers: ignore,
                    users,
                    threepids,
                    external_ids,
                    devices,
                    refresh_tokens,
                    access_tokens,
                }
            },
        )
}

/// A clean case with one hostile row added to one table: what `check` must notice alone.
fn one_bad_row() -> impl Strategy<Value = Case> {
    (
        rows_of(true),
        prop_oneof![
            user(false).prop_map(|u| (Some(u), None, None, None, None, None)),
            threepid(false).prop_map(|t| (None, Some(t), None, None, None, None)),
            external_id(false).prop_map(|e| (None, None, Some(e), None, None, None)),
            device(false).prop_map(|d| (None, None, None, Some(d), None, None)),
            refresh(false).prop_map(|r| (None, None, None, None, Some(r), None)),
            access(false).prop_map(|a| (None, None, None, None, None, Some(a))),
        ],
    )
        .prop_map(|(mut case, (u, t, e, d, r, a))| {
            case.mode = "one bad row";
            case.users.extend(u);
            case.threepids.extend(t);
            case.external_ids.extend(e);
            case.devices.extend(d);
            case.refresh_tokens.extend(r);
            case.access_tokens.extend(a);
            case
        })
}

fn case() -> impl Strategy<Value = Case> {
    prop_oneof![2 => rows_of(true), 2 => one_bad_row(), 1 => rows_of(false)]
}

// ------------------------------------------------------------------------------------------------
// From specs to rows
// ------------------------------------------------------------------------------------------------

/// The rows to insert, with Synapse's unique constraints respected (later duplicates dropped).
#[derive(Debug, Default)]
struct Rows {
    users: Vec<UserSpec>,
    names: Vec<String>,
    threepids: Vec<(String, ThreepidSpec)>,
    external_ids: Vec<(String, ExternalIdSpec)>,
    /// (user_id, spec)
    devices: Vec<(String, DeviceSpec)>,
    /// (id, user_id, device_id, spec, next_token_id)
    refresh_tokens: Vec<(i64, String, String, RefreshSpec, Option<i64>)>,
    access_tokens: Vec<AccessRow>,
}

#[derive(Debug)]
struct AccessRow {
    id: i64,
    user_id: String,
    device_id: Option<String>,
    puppet: Option<String>,
    refresh: Option<i64>,
    spec: AccessSpec,
}

fn build(case: &Case) -> Rows {
    let mut rows = Rows::default();
    let mut seen = HashSet::new();
    for u in &case.users {
        if let Some((l, s)) = &u.name {
            let name = format!("@{l}:{s}");
            if !seen.insert(name.clone()) {
                continue;
            }
            rows.names.push(name);
        }
        rows.users.push(u.clone());
    }
    let names = rows.names.clone();
    let resolve = |o: &Owner| -> String {
        match o {
            Owner::User(i) if !names.is_empty() => names[i.index(names.len())].clone(),
            Owner::User(_) => format!("@nobody:{SERVER}"),
            Owner::Dangling(s) => s.clone(),
        }
    };
    let mut seen = HashSet::new();
    for t in &case.threepids {
        if seen.insert((t.medium.clone(), t.address.clone())) {
            rows.threepids.push((resolve(&t.owner), t.clone()));
        }
    }
    let mut seen = HashSet::new();
    for e in &case.external_ids {
        if seen.insert((e.auth_provider.clone(), e.external_id.clone())) {
            rows.external_ids.push((resolve(&e.owner), e.clone()));
        }
    }
    let mut seen = HashSet::new();
    for d in &case.devices {
        let user = resolve(&d.owner);
        if seen.insert((user.clone(), d.device_id.clone())) {
            rows.devices.push((user, d.clone()));
        }
    }
    let device_of = |r: &DeviceRef, devices: &[(String, DeviceSpec)]| -> (String, String) {
        match r {
            DeviceRef::Device(i) if !devices.is_empty() => {
                let (u, d) = &devices[i.index(devices.len())];
                (u.clone(), d.device_id.clone())
            }
            DeviceRef::Device(_) => (
                resolve(&Owner::Dangling(format!("@nobody:{SERVER}"))),
                "NODEVICE".into(),
            ),
            DeviceRef::Dangling(o, d) => (resolve(o), d.clone()),
        }
    };
    let mut tokens = HashSet::new();
    for (n, r) in case.refresh_tokens.iter().enumerate() {
        let id = 1000 + n as i64;
        let (user, device) = device_of(&r.device, &rows.devices);
        let next = match (&r.next, rows.refresh_tokens.len()) {
            (Some(i), len) if len > 0 => Some(rows.refresh_tokens[i.index(len)].0),
            _ => None,
        };
        let mut spec = r.clone();
        spec.token = unique(&mut tokens, &r.token, id);
        rows.refresh_tokens.push((id, user, device, spec, next));
    }
    let mut tokens = HashSet::new();
    for (n, a) in case.access_tokens.iter().enumerate() {
        let id = 1 + n as i64;
        let refresh = match (&a.refresh, rows.refresh_tokens.len()) {
            (Some(i), len) if len > 0 => Some(&rows.refresh_tokens[i.index(len)]),
            _ => None,
        };
        // A clean database's access token belongs to its refresh token's user and device.
        let (user_id, device_id) = match (refresh, &a.device) {
            (Some((_, u, d, _, _)), _) if case.clean => (u.clone(), Some(d.clone())),
            (_, Some(r)) => {
                let (u, d) = device_of(r, &rows.devices);
                (u, Some(d))
            }
            (_, None) => (resolve(&a.owner), None),
        };
        let mut spec = a.clone();
        spec.token = unique(&mut tokens, &a.token, id);
        rows.access_tokens.push(AccessRow {
            id,
            user_id,
            device_id,
            puppet: a.puppets_user_id.as_ref().map(resolve),
            refresh: refresh.map(|r| r.0),
            spec,
        });
    }
    rows
}

/// Tokens are unique in Synapse (unique index): make a repeated one unique.
fn unique(seen: &mut HashSet<String>, token: &str, id: i64) -> String {
    let mut t = token.to_owned();
    if !seen.insert(t.clone()) {
        t = format!("{token}#{id}");
        seen.insert(t.clone());
    }
    t
}

async fn insert(db: &TestDb, rows: &Rows) {
    let c = db.client().await;
    let mut names = rows.names.iter();
    for u in &rows.users {
        let name = u.name.as_ref().map(|_| names.next().unwrap().clone());
        c.execute(
            "INSERT INTO users (name, password_hash, creation_ts, admin, is_guest, appservice_id, \
             deactivated, locked, shadow_banned) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &name,
                &u.password_hash,
                &u.creation_ts,
                &u.admin,
                &u.is_guest,
                &u.appservice_id,
                &u.deactivated,
                &u.locked,
                &u.shadow_banned,
            ],
        )
        .await
        .unwrap();
    }
    for (user, t) in &rows.threepids {
        c.execute(
            "INSERT INTO user_threepids (user_id, medium, address, validated_at, added_at) \
             VALUES ($1, $2, $3, $4, $5)",
            &[user, &t.medium, &t.address, &t.validated_at, &t.added_at],
        )
        .await
        .unwrap();
    }
    for (user, e) in &rows.external_ids {
        c.execute(
            "INSERT INTO user_external_ids (auth_provider, external_id, user_id) VALUES ($1, $2, $3)",
            &[&e.auth_provider, &e.external_id, user],
        )
        .await
        .unwrap();
    }
    for (user, d) in &rows.devices {
        c.execute(
            "INSERT INTO devices (user_id, device_id, display_name, last_seen, ip, user_agent, hidden) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                user,
                &d.device_id,
                &d.display_name,
                &d.last_seen,
                &d.ip,
                &d.user_agent,
                &d.hidden,
            ],
        )
        .await
        .unwrap();
    }
    for (id, user, device, r, next) in &rows.refresh_tokens {
        c.execute(
            "INSERT INTO refresh_tokens (id, user_id, device_id, token, next_token_id, expiry_ts, \
             ultimate_session_expiry_ts) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                id,
                user,
                device,
                &r.token,
                next,
                &r.expiry_ts,
                &r.ultimate_session_expiry_ts,
            ],
        )
        .await
        .unwrap();
    }
    for a in &rows.access_tokens {
        c.execute(
            "INSERT INTO access_tokens (id, user_id, device_id, token, valid_until_ms, \
             puppets_user_id, last_validated, refresh_token_id, used) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            &[
                &a.id,
                &a.user_id,
                &a.device_id,
                &a.spec.token,
                &a.spec.valid_until_ms,
                &a.puppet,
                &a.spec.last_validated,
                &a.refresh,
                &a.spec.used,
            ],
        )
        .await
        .unwrap();
    }
}

// ------------------------------------------------------------------------------------------------
// The property
// ------------------------------------------------------------------------------------------------

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(mut c: Command) -> Run {
    let out: Output = c.stdin(Stdio::null()).output().expect("run syn2mas");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn no_panic(what: &str, r: &Run) -> Result<(), TestCaseError> {
    prop_assert!(
        r.code != Some(101) && !r.stderr.contains("panicked"),
        "{what} panicked (exit {:?}):\n{}",
        r.code,
        r.stderr
    );
    Ok(())
}

async fn mas_counts(mas: &TestDb) -> BTreeMap<String, i64> {
    let c = mas.client().await;
    let mut out = BTreeMap::new();
    for t in TARGETS {
        let n: i64 = c
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await
            .unwrap()
            .get(0);
        out.insert(t.to_owned(), n);
    }
    let shadows: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'syn2mas\\_new\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    out.insert("(shadow tables)".to_owned(), shadows);
    out
}

fn untouched() -> BTreeMap<String, i64> {
    TARGETS
        .iter()
        .map(|t| ((*t).to_owned(), 0))
        .chain([("(shadow tables)".to_owned(), 0)])
        .collect()
}

/// Outcomes seen, printed at the end so a run shows what it exercised.
static OUTCOMES: std::sync::Mutex<BTreeMap<String, u32>> = std::sync::Mutex::new(BTreeMap::new());

fn tally(outcome: String) {
    *OUTCOMES.lock().unwrap().entry(outcome).or_default() += 1;
}

async fn property(case: Case) -> Result<(), TestCaseError> {
    let rows = build(&case);
    let synapse = TestDb::synapse_empty(Schema::Project).await;
    insert(&synapse, &rows).await;
    let mas = TestDb::mas(Schema::Project).await;
    let dir = tempfile::tempdir().unwrap();
    let (homeserver, mas_config) = write_configs(dir.path(), &synapse, &mas);
    // `check` and `migrate` run the join split differently (one of them down to single rows,
    // by user, then by device, then one device's tokens in runs of one; the other whole), so
    // the comparison of the plan with what `migrate` did below also holds the re-partitioning
    // to the unsplit join.
    let (check_budget, migrate_budget) = if case.access_tokens.len().is_multiple_of(2) {
        ("4194304", "1")
    } else {
        ("1", "4194304")
    };
    let command = |args: &[&str], budget: &str| {
        let mut c = Command::new(syn2mas_bin());
        c.arg("-c")
            .arg(&mas_config)
            .arg("--synapse-config")
            .arg(&homeserver)
            .args(args)
            .env("SYN2MAS_TEST_NOW_MS", "1767225600000")
            // Split the devices/tokens join as a large database would be split, so that rows
            // of different users land in different partitions.
            .env("SYN2MAS_TEST_PARTITIONS", "4")
            .env("SYN2MAS_TEST_PARTITION_BYTES", budget)
            .env_remove("SYN2MAS_TEST_PAUSE");
        if case.ignore_missing_auth_providers {
            c.arg("--ignore-missing-auth-providers");
        }
        c
    };

    let check = run(command(&["check", "--json"], check_budget));
    no_panic("check", &check)?;
    prop_assert!(
        matches!(check.code, Some(0 | 10 | 11)),
        "check exit {:?}:\n{}",
        check.code,
        check.stderr
    );
    let report: serde_json::Value = serde_json::from_str(&check.stdout)
        .map_err(|e| TestCaseError::fail(format!("check --json: {e}\n{}", check.stdout)))?;

    let migrate = run(command(
        &["migrate", "--allow-warnings", "--seed", "1", "--json"],
        migrate_budget,
    ));
    no_panic("migrate", &migrate)?;
    let errors: Vec<&str> = report["errors"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["id"].as_str()).collect())
        .unwrap_or_default();
    tally(format!(
        "{} case: check exit {:?} {errors:?}, migrate exit {:?}",
        case.mode, check.code, migrate.code
    ));
    let counts = mas_counts(&mas).await;
    if migrate.code != Some(0) {
        prop_assert_eq!(
            &counts,
            &untouched(),
            "migrate exited {:?} but changed MAS:\n{}",
            migrate.code,
            migrate.stderr
        );
    }
    if check.code == Some(10) {
        prop_assert_eq!(
            migrate.code,
            Some(10),
            "check found errors; migrate must refuse:\n{}",
            migrate.stderr
        );
        return Ok(());
    }

    // check passed: migrate must succeed, or check missed something it should have flagged.
    prop_assert_eq!(
        migrate.code,
        Some(0),
        "check passed (exit {:?}) but migrate failed:\n{}",
        check.code,
        migrate.stderr
    );
    let summary: serde_json::Value = serde_json::from_str(&migrate.stdout)
        .map_err(|e| TestCaseError::fail(format!("migrate --json: {e}\n{}", migrate.stdout)))?;
    for e in summary["migrate"]["entities"].as_array().unwrap() {
        let name = e["entity"].as_str().unwrap();
        let read = e["read"].as_u64().unwrap();
        let migrated = e["migrated"].as_u64().unwrap();
        let skipped: u64 = e["skipped"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_u64().unwrap())
            .sum();
        prop_assert_eq!(
            read,
            migrated + skipped,
            "{}: read = migrated + skipped",
            name
        );
    }
    let diff = common::plan_differences(&report, &summary);
    prop_assert!(diff.is_empty(), "check's plan vs migrate: {:#?}", diff);
    prop_assert_eq!(
        summary["migrate"]["plan_mismatches"]
            .as_array()
            .map(Vec::len),
        Some(0)
    );
    for t in TARGETS {
        prop_assert_eq!(
            summary["migrate"]["mas_rows"][t].as_i64().unwrap_or(0),
            counts[t],
            "MAS `{}` rows vs the summary",
            t
        );
    }
    prop_assert_eq!(counts["(shadow tables)"], 0);
    prop_assert_eq!(
        counts["users"] as usize,
        rows.users
            .iter()
            .filter(|u| u.appservice_id.is_none())
            .count(),
        "every non-appservice user is migrated"
    );
    Ok(())
}

#[test]
fn generated_synapse_databases_check_and_migrate_consistently() {
    let cases = std::env::var("SYN2MAS_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut runner = TestRunner::new(Config {
        cases,
        // Each case builds two databases and runs the binary twice: shrink briefly and keep
        // no regression file in the source tree (the failure message prints the case).
        max_shrink_iters: 24,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |case| rt.block_on(property(case)));
    for (outcome, n) in OUTCOMES.lock().unwrap().iter() {
        eprintln!("{n:>4} × {outcome}");
    }
    if let Err(e) = result {
        panic!("{e}");
    }
}
