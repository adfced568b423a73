//! SQL fragments shared by the Synapse data checks.
//!
//! The server name is always the bind parameter `$1` (never spliced into SQL text); only fixed
//! identifiers from this crate are formatted into statements.

/// `col` is `@<non-empty localpart>:<$1>`: the form MAS's localpart extraction accepts. A suffix
/// comparison, not a split at the first `:`, so a server name with a port (`example.com:8448`)
/// works and a `:` inside the localpart is reported separately (`E-localpart-colon`).
pub fn on_server(col: &str) -> String {
    format!(
        "({col} LIKE '@%' AND length({col}) > length($1::text) + 2 \
         AND right({col}, length($1::text) + 1) = ':' || $1::text)"
    )
}

/// The localpart of a user id that satisfies [`on_server`].
pub fn localpart(col: &str) -> String {
    format!("substr({col}, 2, length({col}) - length($1::text) - 2)")
}

/// `col` is on the server and its localpart contains `:`.
pub fn localpart_has_colon(col: &str) -> String {
    format!(
        "({} AND strpos({}, ':') > 0)",
        on_server(col),
        localpart(col)
    )
}

/// A password hash that is not bcrypt (`$2a$`, `$2b$`, `$2y$`); NULL and empty mean "no
/// password" to Synapse and are not counted.
pub const NON_BCRYPT_HASH: &str =
    "(password_hash <> '' AND left(password_hash, 4) NOT IN ('$2a$', '$2b$', '$2y$'))";

/// Up to `limit` distinct values of `expr` from `from` where `cond` holds. Scans at most a few
/// hundred matching rows, so it stays cheap even on big tables; only run when a count was > 0.
pub fn examples(expr: &str, from: &str, cond: &str, limit: usize) -> String {
    format!(
        "SELECT DISTINCT ex FROM (SELECT {expr} AS ex FROM {from} WHERE {cond} LIMIT 500) s \
         ORDER BY ex LIMIT {limit}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_never_contain_a_literal_server_name() {
        for s in [
            on_server("name"),
            localpart("name"),
            localpart_has_colon("t.user_id"),
        ] {
            assert!(s.contains("$1::text"), "{s}");
        }
    }
}
