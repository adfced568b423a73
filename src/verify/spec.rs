//! What is compared for each MAS table: the two sorted queries (sql/verify/*.sql) and the
//! meaning of their columns.
//!
//! Both queries of an entity start with the same natural-key columns, sorted the same way
//! (`COLLATE "C"`, NULLS FIRST), then one group per compared column (in the same order on both
//! sides). Synapse rows end with `skip` (the migration's own reason not to migrate the row);
//! MAS rows end with the row's ULID id when the table has one, to check its time part.
//! The Synapse queries state the mapping's rules on their own, in SQL, apart from the Rust
//! transform that `migrate` and `check` share: `verify` is the independent oracle that catches a
//! mistake in either.

use std::sync::LazyLock;

use super::compare::Kind;

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
    pub synapse_sql: &'static str,
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
        synapse_sql: include_str!("../../sql/verify/synapse_users.sql"),
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
        synapse_sql: include_str!("../../sql/verify/synapse_passwords.sql"),
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
        synapse_sql: include_str!("../../sql/verify/synapse_emails.sql"),
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
        synapse_sql: include_str!("../../sql/verify/synapse_unsupported.sql"),
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
        synapse_sql: include_str!("../../sql/verify/synapse_links.sql"),
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
        synapse_sql: include_str!("../../sql/verify/synapse_sessions.sql"),
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
        synapse_sql: include_str!("../../sql/verify/synapse_deviceless.sql"),
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
        synapse_sql: include_str!("../../sql/verify/synapse_access_tokens.sql"),
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
        synapse_sql: include_str!("../../sql/verify/synapse_refresh_tokens.sql"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_read_only() {
        for s in all() {
            for sql in [s.synapse_sql, s.mas_sql] {
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
}
