//! The Synapse reads, each declared once: a struct whose fields are the columns (name, Rust type
//! and the SQL expression that yields it) and the `FROM` clause. The `SELECT` statement, the
//! column count and the decoder are generated from that one declaration, so the SQL and the
//! transform cannot disagree about which column is where.
//!
//! The reads are plain: they fetch rows (and, for dependent tables, the owner's columns by a
//! `LEFT JOIN`) and decide nothing. Every rule about what becomes of a row (skip reasons and
//! their order, owners, session times, superseded refresh tokens) is in `transform::rules`.

use crate::db::copy_binary::{FieldError, field};

/// A Rust type a column of binary COPY output decodes to.
pub trait Column<'a>: Sized {
    fn decode(value: Option<&'a [u8]>) -> Result<Self, FieldError>;
}

/// `impl Column` for a type, decoded by a `field` function.
macro_rules! column {
    ($($ty:ty => $decode:expr),+ $(,)?) => {
        $(impl<'a> Column<'a> for $ty {
            fn decode(value: Option<&'a [u8]>) -> Result<Self, FieldError> {
                $decode(value)
            }
        })+
    };
}

column! {
    &'a str => field::text,
    Option<&'a str> => field::opt_text,
    // Text syn2mas copies into MAS as it is, without decoding it (`field::text_bytes` says why
    // that is safe).
    &'a [u8] => field::text_bytes,
    Option<&'a [u8]> => |v: Option<&'a [u8]>| Ok::<_, FieldError>(v),
    i64 => field::int8,
    Option<i64> => field::opt_int8,
    bool => field::bool,
    Option<bool> => field::opt_bool,
}

/// A column whose bytes do not hold what its declared type promises.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column `{column}`: {error}")]
pub struct ColumnError {
    pub column: &'static str,
    pub error: FieldError,
}

/// What every declared read offers to the code that streams and decodes it.
pub trait Read<'a>: Sized {
    /// The Synapse table whose rows this read yields (for messages).
    const TABLE: &'static str;
    /// `(field name, SQL expression)` in `SELECT` order.
    const COLUMNS: &'static [(&'static str, &'static str)];
    /// The `FROM` clause (with joins and conditions).
    const FROM: &'static str;
    /// The SQL expression of the Synapse user a row belongs to: what a read of some users'
    /// rows only ([`Read::sql_for_users`]) filters on.
    const OWNER: &'static str;
    /// Columns per row, for the COPY codec.
    const FIELDS: usize = Self::COLUMNS.len();

    /// One row from its decoded field slices (exactly `FIELDS` of them).
    fn decode(row: &[Option<&'a [u8]>]) -> Result<Self, ColumnError>;

    /// The `SELECT` statement.
    fn sql() -> String {
        let cols: Vec<String> = Self::COLUMNS
            .iter()
            .map(|(name, expr)| format!("{expr} AS {name}"))
            .collect();
        format!("SELECT {} FROM {}", cols.join(", "), Self::FROM)
    }

    /// The `SELECT` of the rows of the users in `users`, a SQL array literal of user ids (see
    /// `stage::sql_text_array`; COPY takes no parameters).
    fn sql_for_users(users: &str) -> String {
        let joiner = if Self::FROM.contains(" WHERE ") {
            "AND"
        } else {
            "WHERE"
        };
        format!("{} {joiner} {} = ANY({users})", Self::sql(), Self::OWNER)
    }
}

/// Declares a read: the struct, and its [`Read`] implementation.
macro_rules! read {
    (
        $(#[$meta:meta])*
        $name:ident reads $table:literal from $from:literal by $owner:literal {
            $( $(#[$fmeta:meta])* $field:ident : $ty:ty = $sql:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy)]
        pub struct $name<'a> {
            $( $(#[$fmeta])* pub $field: $ty, )+
        }

        impl<'a> Read<'a> for $name<'a> {
            const TABLE: &'static str = $table;
            const COLUMNS: &'static [(&'static str, &'static str)] =
                &[ $( (stringify!($field), $sql), )+ ];
            const FROM: &'static str = $from;
            const OWNER: &'static str = $owner;

            fn decode(row: &[Option<&'a [u8]>]) -> Result<Self, ColumnError> {
                let mut values = row.iter().copied();
                Ok(Self {
                    $( $field: <$ty as Column<'a>>::decode(values.next().flatten())
                        .map_err(|error| ColumnError { column: stringify!($field), error })?, )+
                })
            }
        }
    };
}

read! {
    /// Every Synapse user: MAS `users` and `user_passwords`.
    User reads "users" from "users u" by "u.name" {
        name: Option<&'a str> = "u.name",
        password_hash: Option<&'a [u8]> = "u.password_hash",
        creation_ts: Option<i64> = "u.creation_ts",
        admin: bool = "u.admin <> 0",
        deactivated: bool = "u.deactivated <> 0",
        locked: bool = "u.locked",
        is_guest: bool = "u.is_guest <> 0",
        appservice: bool = "u.appservice_id IS NOT NULL",
    }
}

read! {
    /// Every third-party id with its owner's columns (all NULL/false when the owner is missing):
    /// MAS `user_emails` or `user_unsupported_third_party_ids`.
    Threepid reads "user_threepids"
        from "user_threepids t LEFT JOIN users u ON u.name = t.user_id" by "t.user_id" {
        user_id: &'a str = "t.user_id",
        medium: &'a str = "t.medium",
        address: &'a [u8] = "t.address",
        added_at: i64 = "t.added_at",
        owner_exists: bool = "u.name IS NOT NULL",
        owner_appservice: bool = "u.appservice_id IS NOT NULL",
        owner_creation_ts: Option<i64> = "u.creation_ts",
    }
}

read! {
    /// Every external id with its owner's columns: MAS `upstream_oauth_links`.
    ExternalId reads "user_external_ids"
        from "user_external_ids e LEFT JOIN users u ON u.name = e.user_id" by "e.user_id" {
        user_id: &'a str = "e.user_id",
        auth_provider: &'a str = "e.auth_provider",
        external_id: &'a [u8] = "e.external_id",
        owner_exists: bool = "u.name IS NOT NULL",
        owner_appservice: bool = "u.appservice_id IS NOT NULL",
        owner_creation_ts: Option<i64> = "u.creation_ts",
    }
}

read! {
    /// Devices and tokens, read 1 of 3: every named user as the owner of devices and tokens
    /// (partitioned by `name`).
    Owner reads "users" from "users u WHERE u.name IS NOT NULL" by "u.name" {
        name: &'a str = "u.name",
        appservice: bool = "u.appservice_id IS NOT NULL",
        deactivated: bool = "u.deactivated <> 0",
        is_guest: bool = "u.is_guest <> 0",
        creation_ts: Option<i64> = "u.creation_ts",
        admin: bool = "u.admin <> 0",
    }
}

read! {
    /// Devices and tokens, read 2 of 3: every device as stored (partitioned by `user_id`).
    Device reads "devices" from "devices d" by "d.user_id" {
        user_id: &'a str = "d.user_id",
        device_id: &'a str = "d.device_id",
        display_name: Option<&'a [u8]> = "d.display_name",
        last_seen: Option<i64> = "d.last_seen",
        ip: Option<&'a str> = "d.ip",
        user_agent: Option<&'a [u8]> = "d.user_agent",
        hidden: Option<bool> = "d.hidden",
    }
}

read! {
    /// Devices and tokens, read 3 of 3: every access token with its refresh token, and every
    /// refresh token no access token points at (a FULL JOIN; partitioned by `user_id`, the
    /// access token's user, else the refresh token's). `successor_used` is whether the access
    /// token of the refresh token that replaced this one has been used.
    Token reads "access_tokens"
        from "access_tokens a FULL JOIN refresh_tokens r ON r.id = a.refresh_token_id"
        by "coalesce(a.user_id, r.user_id)" {
        user_id: &'a str = "coalesce(a.user_id, r.user_id)",
        id: Option<i64> = "a.id",
        device_id: Option<&'a str> = "a.device_id",
        token: Option<&'a [u8]> = "a.token",
        valid_until_ms: Option<i64> = "a.valid_until_ms",
        last_validated: Option<i64> = "a.last_validated",
        puppet: bool = "a.puppets_user_id IS NOT NULL",
        /// `refresh_token_id IS NULL`: a token that was never refreshable.
        plain: bool = "a.refresh_token_id IS NULL",
        rt_id: Option<i64> = "r.id",
        rt_user_id: Option<&'a str> = "r.user_id",
        rt_device_id: Option<&'a str> = "r.device_id",
        rt_token: Option<&'a [u8]> = "r.token",
        successor_used: bool = "EXISTS (SELECT 1 FROM access_tokens nx \
             WHERE nx.refresh_token_id = r.next_token_id AND nx.used \
               AND nx.refresh_token_id IS NOT NULL)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::copy_binary::Encoder;

    #[test]
    fn the_select_lists_every_declared_column_in_order() {
        let sql = Device::sql();
        assert!(
            sql.starts_with("SELECT d.user_id AS user_id, d.device_id AS device_id,"),
            "{sql}"
        );
        assert!(sql.ends_with("FROM devices d"), "{sql}");
        assert_eq!(Device::FIELDS, 7);
        assert_eq!(Token::FIELDS, Token::COLUMNS.len());
        // The partition key of the three session reads is their first column.
        assert_eq!(Owner::COLUMNS[0].0, "name");
        assert_eq!(Device::COLUMNS[0].0, "user_id");
        assert_eq!(Token::COLUMNS[0].0, "user_id");
    }

    #[test]
    fn decoding_names_the_column_that_does_not_fit() {
        let mut enc = Encoder::with_capacity(256);
        enc.row(7)
            .text("@a:example.com")
            .text("DEV")
            .null()
            .int4(5) // last_seen must be 8 bytes
            .null()
            .null()
            .bool(false);
        let bytes = enc.into_bytes();
        let mut slots = Vec::new();
        crate::db::copy_binary::decode_rows(&bytes, 7, &mut slots).unwrap();
        let err = Device::decode(&slots).unwrap_err();
        assert_eq!(err.column, "last_seen");
        assert_eq!(
            err.error,
            FieldError::Width {
                expected: 8,
                got: 4
            }
        );
    }
}
