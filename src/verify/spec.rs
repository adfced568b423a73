//! What is compared for each MAS table: the two sorted queries (sql/verify/*.sql) and the
//! meaning of their columns.
//!
//! Both queries of an entity start with the same natural-key columns, sorted the same way
//! (`COLLATE "C"`, NULLS FIRST), then one group per compared column (in the same order on both
//! sides). Synapse rows end with `skip` (the migration's own reason not to migrate the row);
//! MAS rows end with the row's ULID id when the table has one, to check its time part.
//! The Synapse queries wrap the migration's own queries (sql/*.sql), so what `verify` expects is
//! by construction what `migrate` writes.

use std::sync::LazyLock;

use super::compare::Kind;
use crate::source::Entity;

#[derive(Debug, Clone, Copy)]
pub struct Col {
    pub name: &'static str,
    pub kind: Kind,
}

const fn col(name: &'static str, kind: Kind) -> Col {
    Col { name, kind }
}

#[derive(Debug)]
pub struct Spec {
    /// The name in the report (the MAS table, or what part of it).
    pub name: &'static str,
    pub synapse_sql: String,
    pub mas_sql: &'static str,
    pub keys: &'static [Col],
    pub cols: &'static [Col],
    /// The id column whose ULID time must match `cols[created]`, when the table has ids.
    pub ulid: Option<Ulid>,
    /// Columns (indices into `cols`) that name a row besides its key: a token's user and device.
    pub label: &'static [usize],
}

#[derive(Debug, Clone, Copy)]
pub struct Ulid {
    pub id: &'static str,
    /// Index into `cols` of the creation time.
    pub created: usize,
}

impl Spec {
    /// Fields of a Synapse row.
    pub fn synapse_fields(&self) -> usize {
        self.keys.len()
            + self
                .cols
                .iter()
                .map(|c| c.kind.synapse_width())
                .sum::<usize>()
            + 1
    }

    /// Fields of a MAS row.
    pub fn mas_fields(&self) -> usize {
        self.keys.len() + self.cols.len() + usize::from(self.ulid.is_some())
    }

    /// Where each compared column starts in a Synapse row.
    pub fn synapse_offsets(&self) -> Vec<usize> {
        let mut at = self.keys.len();
        self.cols
            .iter()
            .map(|c| {
                let start = at;
                at += c.kind.synapse_width();
                start
            })
            .collect()
    }

    /// Where compared column `i` is in a MAS row.
    pub fn mas_col(&self, i: usize) -> usize {
        self.keys.len() + i
    }

    /// Index of the `skip` field in a Synapse row.
    pub fn skip_field(&self) -> usize {
        self.synapse_fields() - 1
    }

    /// Index of the id field in a MAS row.
    pub fn id_field(&self) -> usize {
        self.keys.len() + self.cols.len()
    }
}

const USER: Col = col("username", Kind::User);
const DEVICE: Col = col("device_id", Kind::Text);
const CREATED: Col = col("created_at", Kind::Time);
const CREATED_OR_NOW: Col = col("created_at", Kind::TimeOrAny);
const TOKEN: Col = col("access_token", Kind::Token);

/// Every entity `verify` compares, in report order.
pub fn all() -> &'static [Spec] {
    &SPECS
}

static SPECS: LazyLock<Vec<Spec>> = LazyLock::new(|| {
    vec![
        users(),
        passwords(),
        emails(),
        unsupported(),
        links(),
        device_sessions(),
        deviceless_sessions(),
        access_tokens(),
        refresh_tokens(),
    ]
});

fn users() -> Spec {
    Spec {
        name: "users",
        synapse_sql: synapse(include_str!("../../sql/verify/synapse_users.sql")),
        mas_sql: include_str!("../../sql/verify/mas_users.sql"),
        keys: &[USER],
        cols: const {
            &[
                CREATED,
                col("locked_at", Kind::Time),
                col("deactivated_at", Kind::Time),
                col("can_request_admin", Kind::Bool),
                col("is_guest", Kind::Bool),
            ]
        },
        ulid: Some(Ulid {
            id: "user_id",
            created: 0,
        }),
        label: &[],
    }
}

fn passwords() -> Spec {
    Spec {
        name: "user_passwords",
        synapse_sql: synapse(include_str!("../../sql/verify/synapse_passwords.sql")),
        mas_sql: include_str!("../../sql/verify/mas_passwords.sql"),
        keys: &[USER],
        cols: const {
            &[
                col("hashed_password", Kind::Hash),
                CREATED,
                col("version", Kind::Int),
            ]
        },
        ulid: Some(Ulid {
            id: "user_password_id",
            created: 1,
        }),
        label: &[],
    }
}

fn emails() -> Spec {
    Spec {
        name: "user_emails",
        synapse_sql: synapse(include_str!("../../sql/verify/synapse_emails.sql")),
        mas_sql: include_str!("../../sql/verify/mas_emails.sql"),
        keys: const { &[USER, col("email", Kind::Text)] },
        cols: &[CREATED],
        ulid: Some(Ulid {
            id: "user_email_id",
            created: 0,
        }),
        label: &[],
    }
}

fn unsupported() -> Spec {
    Spec {
        name: "user_unsupported_third_party_ids",
        synapse_sql: synapse(include_str!("../../sql/verify/synapse_unsupported.sql")),
        mas_sql: include_str!("../../sql/verify/mas_unsupported.sql"),
        keys: const { &[USER, col("medium", Kind::Text), col("address", Kind::Text)] },
        cols: &[CREATED],
        ulid: None,
        label: &[],
    }
}

fn links() -> Spec {
    Spec {
        name: "upstream_oauth_links",
        synapse_sql: synapse(include_str!("../../sql/verify/synapse_links.sql")),
        mas_sql: include_str!("../../sql/verify/mas_links.sql"),
        keys: const { &[col("provider", Kind::Uuid), col("subject", Kind::Text)] },
        cols: &[USER, CREATED],
        ulid: Some(Ulid {
            id: "upstream_oauth_link_id",
            created: 1,
        }),
        label: &[0],
    }
}

/// Session columns that deviceless sessions share with device sessions (after their key).
const SESSION_ACTIVITY: [Col; 5] = [
    col("is_synapse_admin", Kind::Bool),
    col("last_active_at", Kind::Time),
    col("last_active_ip", Kind::Ip),
    col("user_agent", Kind::Text),
    col("finished_at", Kind::Time),
];

fn device_sessions() -> Spec {
    static COLS: LazyLock<Vec<Col>> = LazyLock::new(|| {
        let mut cols = vec![
            col("human_name", Kind::Text),
            col("created_at", Kind::SessionTime),
        ];
        cols.extend(SESSION_ACTIVITY);
        cols
    });
    Spec {
        name: "compat_sessions",
        synapse_sql: synapse(include_str!("../../sql/verify/synapse_sessions.sql")),
        mas_sql: include_str!("../../sql/verify/mas_sessions.sql"),
        keys: &[USER, DEVICE],
        cols: &COLS,
        ulid: Some(Ulid {
            id: "compat_session_id",
            created: 1,
        }),
        label: &[],
    }
}

fn deviceless_sessions() -> Spec {
    static COLS: LazyLock<Vec<Col>> = LazyLock::new(|| {
        let mut cols = vec![USER, CREATED_OR_NOW];
        cols.extend(SESSION_ACTIVITY[..1].iter().copied());
        cols.push(col("human_name", Kind::Text));
        cols.extend(SESSION_ACTIVITY[1..].iter().copied());
        cols.push(col("created_at = its token's created_at", Kind::Bool));
        cols.push(col("tokens in the session", Kind::Int));
        cols
    });
    Spec {
        name: "compat_sessions (deviceless)",
        synapse_sql: synapse(include_str!("../../sql/verify/synapse_deviceless.sql")),
        mas_sql: include_str!("../../sql/verify/mas_deviceless.sql"),
        keys: &[TOKEN],
        cols: &COLS,
        ulid: Some(Ulid {
            id: "compat_session_id",
            created: 1,
        }),
        label: &[0],
    }
}

fn access_tokens() -> Spec {
    Spec {
        name: "compat_access_tokens",
        synapse_sql: synapse(include_str!("../../sql/verify/synapse_access_tokens.sql")),
        mas_sql: include_str!("../../sql/verify/mas_access_tokens.sql"),
        keys: &[TOKEN],
        cols: const { &[USER, DEVICE, CREATED_OR_NOW, col("expires_at", Kind::Time)] },
        ulid: Some(Ulid {
            id: "compat_access_token_id",
            created: 2,
        }),
        label: &[0, 1],
    }
}

fn refresh_tokens() -> Spec {
    Spec {
        name: "compat_refresh_tokens",
        synapse_sql: synapse(include_str!("../../sql/verify/synapse_refresh_tokens.sql")),
        mas_sql: include_str!("../../sql/verify/mas_refresh_tokens.sql"),
        keys: const { &[col("refresh_token", Kind::Token)] },
        cols: const {
            &[
                USER,
                DEVICE,
                TOKEN,
                CREATED_OR_NOW,
                col("consumed_at", Kind::Time),
                col("created_at = its access token's created_at", Kind::Bool),
                col("session = its access token's session", Kind::Bool),
            ]
        },
        ulid: Some(Ulid {
            id: "compat_refresh_token_id",
            created: 3,
        }),
        label: &[0, 1],
    }
}

/// The session settings every Synapse query reads (set with `set_config`, never spliced in):
/// the user-id suffix `:<server>` and the auth_provider → MAS provider id map.
const PARAMS: &str = "CROSS JOIN (SELECT current_setting('syn2mas.verify_suffix') AS sfx, \
     current_setting('syn2mas.verify_provider_ids')::jsonb AS provider_ids) p";

/// Expands a Synapse template: `#source <entity>` lines become the migration's query for that
/// entity, `#session_times_with_alternatives` the migration's `sess` CTE with verify's extra
/// columns, `#params` the settings join, `LOCALPART(expr)` the localpart of a user id.
fn synapse(template: &str) -> String {
    let mut sql = template.replace(
        "#session_times_with_alternatives\n",
        &session_times_with_alternatives(),
    );
    for e in Entity::ALL {
        sql = sql.replace(&format!("#source {}\n", source_name(e)), e.query());
    }
    sql = sql.replace("#params", PARAMS);
    expand_localpart(&sql)
}

/// sql/session_times.sql with the columns of sql/verify/session_alternatives.sql added to its
/// aggregate, so one pass over `access_tokens` yields both the exact time `migrate` uses and the
/// times upstream may have used.
fn session_times_with_alternatives() -> String {
    const SESSION_TIMES: &str = include_str!("../../sql/session_times.sql");
    const EXTRA: &str = include_str!("../../sql/verify/session_alternatives.sql");
    const ANCHOR: &str = "AS session_ms";
    assert!(
        SESSION_TIMES.matches(ANCHOR).count() == 1,
        "sql/session_times.sql must name its result `session_ms` exactly once"
    );
    SESSION_TIMES.replacen(ANCHOR, &format!("{ANCHOR},\n{EXTRA}"), 1)
}

/// The file name (without `.sql`) of an entity's migration query.
fn source_name(e: Entity) -> &'static str {
    match e {
        Entity::Users => "users",
        Entity::Threepids => "threepids",
        Entity::ExternalIds => "external_ids",
        Entity::AccessTokens => "access_tokens",
        Entity::RefreshTokens => "refresh_tokens",
        Entity::Devices => "devices",
    }
}

/// `LOCALPART(x)` → the part of user id `x` between `@` and `:<server>` (what `migrate` calls
/// the localpart), or `x` itself when it is not of that form, so such a row can only ever be
/// "missing" in MAS, never match another user.
fn expand_localpart(sql: &str) -> String {
    const OPEN: &str = "LOCALPART(";
    let mut out = String::with_capacity(sql.len() * 2);
    let mut rest = sql;
    while let Some(start) = rest.find(OPEN) {
        out.push_str(&rest[..start]);
        let after = &rest[start + OPEN.len()..];
        let end = after.find(')').expect("LOCALPART( without `)`");
        let x = &after[..end];
        out.push_str(&format!(
            "(CASE WHEN starts_with({x}, '@') AND length({x}) > length(p.sfx) + 1 \
                    AND right({x}, length(p.sfx)) = p.sfx \
               THEN substr({x}, 2, length({x}) - 1 - length(p.sfx)) ELSE {x} END)"
        ));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_are_fully_expanded_and_read_only() {
        for s in all() {
            for sql in [s.synapse_sql.as_str(), s.mas_sql] {
                assert!(!sql.contains("#source"), "{}", s.name);
                assert!(!sql.contains("#params"), "{}", s.name);
                assert!(!sql.contains("#session_times"), "{}", s.name);
                assert!(!sql.contains("LOCALPART("), "{}", s.name);
                let upper = sql.to_uppercase();
                for word in [
                    "INSERT ", "UPDATE ", "DELETE ", "TRUNCATE", "CREATE ", "ALTER ",
                ] {
                    assert!(!upper.contains(word), "{} contains {word}", s.name);
                }
            }
            assert!(s.synapse_sql.contains("skip"), "{}", s.name);
        }
    }

    #[test]
    fn layouts_are_consistent() {
        for s in all() {
            assert_eq!(s.synapse_offsets().len(), s.cols.len());
            if let Some(u) = s.ulid {
                assert!(matches!(
                    s.cols[u.created].kind,
                    Kind::Time | Kind::TimeOrAny | Kind::SessionTime
                ));
            }
            assert!(s.label.iter().all(|&i| i < s.cols.len()));
            assert!(s.cols.len() <= 64, "differences are kept in a u64 mask");
        }
    }

    #[test]
    fn session_times_gain_the_alternatives() {
        let sql = session_times_with_alternatives();
        assert!(sql.contains("AS session_ms,"));
        assert!(sql.contains("AS times"));
        assert!(sql.contains("AS untimed"));
        let devices = all().iter().find(|s| s.name == "compat_sessions").unwrap();
        assert!(devices.synapse_sql.contains("AS untimed"));
    }

    #[test]
    fn localpart_expands_every_occurrence() {
        let sql = expand_localpart("SELECT LOCALPART(a.x), LOCALPART(b.y) FROM t");
        assert!(sql.contains("starts_with(a.x, '@')"));
        assert!(sql.contains("substr(b.y, 2"));
        assert!(!sql.contains("LOCALPART"));
    }
}
