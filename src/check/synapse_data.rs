//! Checks on the rows of Synapse's database: everything that would make `migrate` fail half-way
//! (wrong server names, orphans, NULLs, duplicate tokens) or silently lose something (skipped
//! tokens, unverifiable hashes).
//!
//! Cost model: one aggregate pass per table, each computing all of that table's counts with
//! `count(*) FILTER (…)` and hash-joining `users` (and `devices` for tokens) once; example
//! queries run only when a count is non-zero; duplicate-token scans are skipped when a unique
//! index already rules duplicates out. No locks beyond the ACCESS SHARE every SELECT takes.

use super::ids;
use super::report::{Finding, MAX_EXAMPLES};
use super::sql::{self, examples, localpart_has_colon, on_server};
use anyhow::{Context, Result};
use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

/// What the Synapse side contributes to the report.
#[derive(Debug, Default)]
pub struct SynapseFacts {
    pub findings: Vec<Finding>,
    /// Rows of `user_external_ids` per `auth_provider`, ordered by name.
    pub providers: Vec<(String, u64)>,
}

/// A table whose `user_id` refers to `users.name`.
struct Dependent {
    table: &'static str,
    /// Extra join after `LEFT JOIN users u`.
    join: &'static str,
    /// Rows `migrate` skips before it looks at the owner (so they are not orphans).
    pre_skip: &'static str,
    /// Extra counts: (condition, finding builder).
    extras: &'static [Extra],
    group_by: Option<&'static str>,
}

/// An extra per-table count and how to report it.
struct Extra {
    cond: &'static str,
    /// Expression shown as an example (never a token, hash or address).
    example: &'static str,
    report: fn(u64) -> Finding,
}

const JOIN_DEVICES: &str =
    "LEFT JOIN devices d ON d.user_id = t.user_id AND d.device_id = t.device_id";

/// Access tokens `migrate` would otherwise carry over but skips because their device is not a
/// real one (cross-signing key holders, NULL `hidden`, `guest_device`).
const HIDDEN_DEVICE_TOKEN: &str = "(t.puppets_user_id IS NULL AND d.user_id IS NOT NULL \
     AND (d.hidden IS NOT FALSE OR d.device_id = 'guest_device') \
     AND u.deactivated = 0 AND u.is_guest = 0 AND u.appservice_id IS NULL)";

/// Access tokens `migrate` skips before it looks at their owner: puppets, tokens of deleted
/// devices, and halves of refresh pairs skipped as inconsistent or superseded (the order of
/// sql/access_tokens.sql and sql/refresh_tokens.sql). The subqueries only run for the rare
/// rows that reach them (an orphan on our server).
const TOKEN_PRE_SKIP: &str = "t.puppets_user_id IS NOT NULL \
     OR (t.device_id IS NOT NULL AND d.user_id IS NULL) \
     OR EXISTS (SELECT 1 FROM refresh_tokens r WHERE r.id = t.refresh_token_id \
                AND (r.user_id <> t.user_id OR r.device_id IS DISTINCT FROM t.device_id \
                     OR EXISTS (SELECT 1 FROM access_tokens nx \
                                 WHERE nx.refresh_token_id = r.next_token_id AND nx.used)))";

/// Refresh tokens `migrate` skips before it looks at their owner: no access token, a pair
/// naming two users or devices, a deleted device, a superseded pair (sql/refresh_tokens.sql).
const REFRESH_PRE_SKIP: &str = "NOT EXISTS (SELECT 1 FROM access_tokens x WHERE x.refresh_token_id = t.id) \
     OR EXISTS (SELECT 1 FROM access_tokens x WHERE x.refresh_token_id = t.id \
                AND (x.user_id <> t.user_id OR x.device_id IS DISTINCT FROM t.device_id)) \
     OR d.user_id IS NULL \
     OR EXISTS (SELECT 1 FROM access_tokens nx \
                 WHERE nx.refresh_token_id = t.next_token_id AND nx.used)";

const NON_EMAIL: Extra = Extra {
    cond: "t.medium <> 'email'",
    example: "t.user_id || ' (' || t.medium || ')'",
    report: non_email_threepids,
};

const DEPENDENTS: &[Dependent] = &[
    Dependent {
        table: "user_threepids",
        join: "",
        pre_skip: "false",
        extras: &[
            NON_EMAIL,
            Extra {
                cond: "u.name IS NOT NULL AND u.appservice_id IS NULL \
                       AND t.added_at NOT BETWEEN -210866803200000 AND 9224318015999999",
                example: "t.user_id || ' (' || t.medium || ')'",
                report: |n| timestamp_range(n, "added_at"),
            },
        ],
        group_by: None,
    },
    Dependent {
        table: "user_external_ids",
        join: "",
        pre_skip: "false",
        extras: &[],
        group_by: Some("t.auth_provider"),
    },
    Dependent {
        table: "devices",
        join: "",
        pre_skip: "t.hidden IS NOT FALSE OR t.device_id = 'guest_device'",
        extras: &[Extra {
            cond: "u.name IS NOT NULL AND u.appservice_id IS NULL AND u.deactivated = 0 \
                   AND u.is_guest = 0 AND t.hidden IS FALSE AND t.device_id <> 'guest_device' \
                   AND t.last_seen NOT BETWEEN -210866803200000 AND 9224318015999999",
            example: "t.user_id || ' (device ' || t.device_id || ')'",
            report: |n| timestamp_range(n, "last_seen"),
        }],
        group_by: None,
    },
    Dependent {
        table: "access_tokens",
        join: JOIN_DEVICES,
        pre_skip: TOKEN_PRE_SKIP,
        extras: &[
            Extra {
                cond: HIDDEN_DEVICE_TOKEN,
                example: "t.user_id || ' (device ' || t.device_id || ')'",
                report: token_hidden_device,
            },
            Extra {
                cond: "u.name IS NOT NULL AND u.appservice_id IS NULL AND u.deactivated = 0 \
                       AND u.is_guest = 0 AND t.puppets_user_id IS NULL \
                       AND (t.last_validated NOT BETWEEN -210866803200000 AND 9224318015999999 \
                         OR t.valid_until_ms NOT BETWEEN -210866803200000 AND 9224318015999999)",
                example: "t.user_id || ' (id ' || t.id || ')'",
                report: |n| timestamp_range(n, "last_validated` or `valid_until_ms"),
            },
        ],
        group_by: None,
    },
    Dependent {
        table: "refresh_tokens",
        join: JOIN_DEVICES,
        pre_skip: REFRESH_PRE_SKIP,
        extras: &[],
        group_by: None,
    },
];

/// Runs every data check. The schema must have passed `synapse_schema::inspect`.
pub async fn inspect(client: &Client, server_name: &str) -> Result<SynapseFacts> {
    let mut facts = SynapseFacts {
        findings: users_pass(client, server_name).await?,
        providers: Vec::new(),
    };
    for dep in DEPENDENTS {
        let groups = dependent_pass(client, dep, server_name).await?;
        if dep.group_by.is_some() {
            facts.providers = groups
                .iter()
                .map(|g| (g.group.clone().unwrap_or_default(), g.total))
                .collect();
        }
        let totals = TableCounts::sum(&groups, dep.extras.len());
        facts
            .findings
            .extend(dependent_findings(client, dep, &totals, server_name).await?);
    }
    facts.findings.extend(duplicate_tokens(client).await?);
    Ok(facts)
}

/// The checks `migrate` runs before it starts (unless `--full-check`): one pass over `users`,
/// the provider counts, the non-email count, a join-free server-name scan of `refresh_tokens`
/// and the duplicate-token scans, about a tenth of [`inspect`]'s cost. The per-row conditions
/// the dependent passes count (server names, orphans, NULLs, timestamps) are enforced again by
/// the migration's own transform, which stops the run at the first such row before MAS sees
/// anything; skipped rows (hidden-device tokens, appservice rows) are counted by reason in its
/// summary.
pub async fn preflight(client: &Client, server_name: &str) -> Result<SynapseFacts> {
    let mut facts = SynapseFacts {
        findings: users_pass(client, server_name).await?,
        providers: provider_counts(client).await?,
    };
    facts.findings.extend(non_email_count(client).await?);
    for dep in DEPENDENTS
        .iter()
        .filter(|d| SERVER_SCANNED.contains(&d.table))
    {
        facts
            .findings
            .extend(wrong_server_rows(client, dep, server_name).await?);
    }
    facts.findings.extend(duplicate_tokens(client).await?);
    Ok(facts)
}

/// The dependent tables whose user ids the preflight scans for E-server-name. The transform
/// checks the user id of every threepid, external id, device and access token before any skip
/// reason (a 1M-user preflight spent ~0.9 s scanning those); a refresh token's own user id is
/// not read by the migration (a mismatch with its access token only skips the pair), so its
/// table is still scanned here (~0.03 s).
const SERVER_SCANNED: &[&str] = &["refresh_tokens"];

/// E-server-name for a dependent table: a scan without joins. `check` reports every such row,
/// including rows `migrate` would skip for another reason before it looks at the user id
/// (a hidden device, a deactivated owner), so the transform alone would let those through.
async fn wrong_server_rows(
    client: &Client,
    dep: &Dependent,
    server_name: &str,
) -> Result<Vec<Finding>> {
    let sql = format!(
        "SELECT count(*) FILTER (WHERE NOT {}) FROM {} t",
        on_server("t.user_id"),
        dep.table
    );
    let counts = TableCounts {
        wrong_server: count(&query(client, &sql, server_name).await?[0], 0),
        extras: vec![0; dep.extras.len()],
        ..TableCounts::default()
    };
    if counts.wrong_server == 0 {
        return Ok(Vec::new());
    }
    dependent_findings(client, dep, &counts, server_name).await
}

/// Rows of `user_external_ids` per `auth_provider`, ordered by name.
async fn provider_counts(client: &Client) -> Result<Vec<(String, u64)>> {
    let rows = client
        .query(
            "SELECT auth_provider::text, count(*) FROM user_external_ids GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .context("counting user_external_ids per auth_provider")?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, Option<String>>(0).unwrap_or_default(),
                count(r, 1),
            )
        })
        .collect())
}

/// W-non-email-threepids without the join the full pass makes.
async fn non_email_count(client: &Client) -> Result<Vec<Finding>> {
    let from = "user_threepids t";
    let sql = format!("SELECT count(*) FROM {from} WHERE {}", NON_EMAIL.cond);
    let n = count(&query(client, &sql, "").await?[0], 0);
    if n == 0 {
        return Ok(Vec::new());
    }
    let ex = example_values(client, NON_EMAIL.example, from, NON_EMAIL.cond, "").await?;
    Ok(vec![
        (NON_EMAIL.report)(n)
            .with_examples(ex)
            .in_table("user_threepids"),
    ])
}

/// Runs a query with `$1` = server name when the statement uses it.
async fn query(client: &Client, sql: &str, server_name: &str) -> Result<Vec<tokio_postgres::Row>> {
    let with: [&(dyn ToSql + Sync); 1] = [&server_name];
    let params: &[&(dyn ToSql + Sync)] = if sql.contains("$1") { &with } else { &[] };
    client
        .query(sql, params)
        .await
        .with_context(|| format!("Synapse check query failed: {sql}"))
}

async fn example_values(
    client: &Client,
    expr: &str,
    from: &str,
    cond: &str,
    server_name: &str,
) -> Result<Vec<String>> {
    let sql = examples(expr, from, cond, MAX_EXAMPLES);
    let rows = query(client, &sql, server_name).await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(0))
        .collect())
}

fn count(row: &tokio_postgres::Row, idx: usize) -> u64 {
    row.get::<_, i64>(idx).max(0) as u64
}

// ---------------------------------------------------------------------------------------------
// users

async fn users_pass(client: &Client, server_name: &str) -> Result<Vec<Finding>> {
    let checks = user_checks();
    let filters: Vec<String> = checks
        .iter()
        .map(|c| format!("count(*) FILTER (WHERE {})", c.cond))
        .collect();
    let sql = format!("SELECT {} FROM users", filters.join(", "));
    let rows = query(client, &sql, server_name).await?;
    let mut out = Vec::new();
    for (i, check) in checks.iter().enumerate() {
        let n = count(&rows[0], i);
        if n > 0 {
            let ex =
                example_values(client, check.example, "users", &check.cond, server_name).await?;
            out.push(
                (check.report)(n, server_name)
                    .with_examples(ex)
                    .in_table("users"),
            );
        }
    }
    Ok(out)
}

struct UserCheck {
    cond: String,
    example: &'static str,
    report: fn(u64, &str) -> Finding,
}

fn user_checks() -> Vec<UserCheck> {
    vec![
        UserCheck {
            cond: "name IS NULL OR creation_ts IS NULL".into(),
            example: "coalesce(name, '(NULL name)')",
            report: null_user_fields,
        },
        UserCheck {
            cond: format!("name IS NOT NULL AND NOT {}", on_server("name")),
            example: "name",
            report: |n, s| wrong_server(n, s, "users"),
        },
        UserCheck {
            cond: format!("appservice_id IS NULL AND {}", localpart_has_colon("name")),
            example: "name",
            report: localpart_colon,
        },
        UserCheck {
            cond: "is_guest <> 0".into(),
            example: "name",
            report: |n, _| guests(n),
        },
        UserCheck {
            // Seconds; migrate turns them into milliseconds (see `timestamp_range`).
            cond: "appservice_id IS NULL \
                   AND creation_ts NOT BETWEEN -210866803200 AND 9224318015999"
                .into(),
            example: "name",
            report: |n, _| timestamp_range(n, "creation_ts"),
        },
        UserCheck {
            cond: format!("appservice_id IS NULL AND {}", sql::NON_BCRYPT_HASH),
            example: "name",
            report: |n, _| non_bcrypt(n),
        },
    ]
}

fn null_user_fields(n: u64, _: &str) -> Finding {
    Finding::new(
        ids::NULL_USER_FIELDS,
        "users with a NULL `name` or NULL `creation_ts`; migrate cannot give them a username or creation time",
        n,
        "in Synapse, delete rows with a NULL name and set a creation time on the others \
         (e.g. `UPDATE users SET creation_ts = 0 WHERE creation_ts IS NULL;`)",
    )
}

fn wrong_server(n: u64, server_name: &str, table: &str) -> Finding {
    Finding::new(
        ids::SERVER_NAME,
        format!(
            "rows of `{table}` whose user id is not `@<localpart>:{server_name}` (MAS `matrix.homeserver`, \
             the server name migrate uses); upstream syn2mas dies on them mid-run (MAS #4881)"
        ),
        n,
        "if MAS's `matrix.homeserver` is wrong, fix it; otherwise these rows belong to another server \
         name (e.g. left from a rename) and must be removed from Synapse before migrating",
    )
}

fn localpart_colon(n: u64, _: &str) -> Finding {
    Finding::new(
        ids::LOCALPART_COLON,
        "non-appservice users whose localpart contains `:`; MAS usernames cannot hold it",
        n,
        "these accounts cannot be migrated: remove them (and their rows in the other user tables) \
         from Synapse, or mark them as appservice users if a bridge owns them",
    )
}

/// Rows with a time PostgreSQL's `timestamptz` cannot hold (4713 BC to 294276 AD): the
/// conditions above use the bounds of `copy_binary::pg_micros_from_unix_ms` in Unix
/// milliseconds, -210866803200000 and 9224318015999999 (seconds for `users.creation_ts`).
fn timestamp_range(n: u64, column: &str) -> Finding {
    Finding::new(
        ids::TIMESTAMP_RANGE,
        format!(
            "rows whose `{column}` is a time PostgreSQL's `timestamptz` cannot hold (before \
             4713 BC or after 294276 AD); migrate cannot write them"
        ),
        n,
        "no Synapse writes such values: in Synapse, set them to a real time (or NULL where \
         the column allows it) after a look at the rows",
    )
}

fn guests(n: u64) -> Finding {
    Finding::new(
        ids::GUESTS,
        "guest users; they will be migrated as MAS guests (`is_guest`), which MAS does not support \
         otherwise; their tokens and devices are not migrated",
        n,
        "nothing is required; deactivate or delete the guest accounts in Synapse first if you do not want them in MAS",
    )
}

fn non_bcrypt(n: u64) -> Finding {
    Finding::new(
        ids::NON_BCRYPT_HASHES,
        "users whose password hash is not bcrypt (`$2a$`/`$2b$`/`$2y$`); MAS's v1 (bcrypt) scheme \
         cannot verify it, so these users will need a password reset",
        n,
        "tell these users to reset their password after the migration (the hashes are migrated as they are)",
    )
}

// ---------------------------------------------------------------------------------------------
// tables that refer to users

/// Counts of one dependent-table pass (or one group of it).
#[derive(Debug, Default, Clone)]
struct TableCounts {
    group: Option<String>,
    total: u64,
    wrong_server: u64,
    orphans: u64,
    as_colon: u64,
    extras: Vec<u64>,
}

impl TableCounts {
    fn sum(groups: &[TableCounts], extras: usize) -> TableCounts {
        let mut t = TableCounts {
            extras: vec![0; extras],
            ..TableCounts::default()
        };
        for g in groups {
            t.total += g.total;
            t.wrong_server += g.wrong_server;
            t.orphans += g.orphans;
            t.as_colon += g.as_colon;
            for (a, b) in t.extras.iter_mut().zip(&g.extras) {
                *a += b;
            }
        }
        t
    }
}

/// Rows on the right server whose owner is missing and that migrate would not have skipped
/// anyway (puppet tokens, tokens of deleted devices, hidden devices are skipped first).
fn orphan_cond(dep: &Dependent) -> String {
    format!(
        "{} AND u.name IS NULL AND NOT ({})",
        on_server("t.user_id"),
        dep.pre_skip
    )
}

fn as_colon_cond() -> String {
    format!(
        "u.appservice_id IS NOT NULL AND {}",
        localpart_has_colon("t.user_id")
    )
}

fn dependent_sql(dep: &Dependent) -> String {
    let mut cols = vec![
        format!("{}::text", dep.group_by.unwrap_or("NULL")),
        "count(*)".to_owned(),
        format!("count(*) FILTER (WHERE NOT {})", on_server("t.user_id")),
        format!("count(*) FILTER (WHERE {})", orphan_cond(dep)),
        format!("count(*) FILTER (WHERE {})", as_colon_cond()),
    ];
    cols.extend(
        dep.extras
            .iter()
            .map(|e| format!("count(*) FILTER (WHERE {})", e.cond)),
    );
    let group = if dep.group_by.is_some() {
        " GROUP BY 1 ORDER BY 1"
    } else {
        ""
    };
    format!(
        "SELECT {} FROM {} t LEFT JOIN users u ON u.name = t.user_id {}{}",
        cols.join(", "),
        dep.table,
        dep.join,
        group
    )
}

async fn dependent_pass(
    client: &Client,
    dep: &Dependent,
    server_name: &str,
) -> Result<Vec<TableCounts>> {
    let rows = query(client, &dependent_sql(dep), server_name).await?;
    Ok(rows
        .iter()
        .map(|r| TableCounts {
            group: r.get(0),
            total: count(r, 1),
            wrong_server: count(r, 2),
            orphans: count(r, 3),
            as_colon: count(r, 4),
            extras: (0..dep.extras.len()).map(|i| count(r, 5 + i)).collect(),
        })
        .collect())
}

async fn dependent_findings(
    client: &Client,
    dep: &Dependent,
    c: &TableCounts,
    server_name: &str,
) -> Result<Vec<Finding>> {
    let t = dep.table;
    let from_users = format!("{t} t LEFT JOIN users u ON u.name = t.user_id {}", dep.join);
    let mut out = Vec::new();
    let mut push = |f: Finding, ex: Vec<String>| out.push(f.with_examples(ex).in_table(t));
    if c.wrong_server > 0 {
        let cond = format!("NOT {}", on_server("t.user_id"));
        let ex = example_values(client, "t.user_id", &format!("{t} t"), &cond, server_name).await?;
        push(wrong_server(c.wrong_server, server_name, t), ex);
    }
    if c.orphans > 0 {
        let ex = example_values(
            client,
            "t.user_id",
            &from_users,
            &orphan_cond(dep),
            server_name,
        )
        .await?;
        push(orphans(c.orphans, t), ex);
    }
    if c.as_colon > 0 {
        let ex = example_values(
            client,
            "t.user_id",
            &from_users,
            &as_colon_cond(),
            server_name,
        )
        .await?;
        push(appservice_colon(c.as_colon, t), ex);
    }
    for (extra, n) in dep.extras.iter().zip(&c.extras) {
        if *n > 0 {
            let ex =
                example_values(client, extra.example, &from_users, extra.cond, server_name).await?;
            push((extra.report)(*n), ex);
        }
    }
    Ok(out)
}

fn orphans(n: u64, table: &str) -> Finding {
    Finding::new(
        ids::ORPHAN_ROWS,
        format!(
            "rows of `{table}` whose user id has no `users` row (Synapse has no foreign keys); \
             they cannot be migrated (upstream syn2mas dies on them mid-run)"
        ),
        n,
        format!(
            "delete them in Synapse after a look: \
             `DELETE FROM {table} t WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.name = t.user_id);`"
        ),
    )
}

fn appservice_colon(n: u64, table: &str) -> Finding {
    Finding::new(
        ids::APPSERVICE_COLON,
        format!(
            "rows of `{table}` owned by appservice users whose localpart contains `:`; migrate skips \
             those users and these rows (upstream syn2mas would die on them)"
        ),
        n,
        "nothing is required: appservice users stay managed by their appservice",
    )
}

fn non_email_threepids(n: u64) -> Finding {
    Finding::new(
        ids::NON_EMAIL_THREEPIDS,
        "non-email third-party ids (probably phone numbers); they will be migrated to \
         `user_unsupported_third_party_ids`, which MAS does not use",
        n,
        "nothing is required; users keep logging in with their username",
    )
}

fn token_hidden_device(n: u64) -> Finding {
    Finding::new(
        ids::TOKEN_HIDDEN_DEVICE,
        "access tokens whose device is hidden (cross-signing key), has `hidden` NULL, or is `guest_device`; \
         migrate skips them, so those sessions will have to log in again",
        n,
        "nothing is required; MAS has no session for such devices",
    )
}

/// Up to 5 users with an external id of `auth_provider` (an index range scan on the
/// `(auth_provider, external_id)` unique index); only the user ids, never the subjects.
pub async fn provider_users(client: &Client, auth_provider: &str) -> Result<Vec<String>> {
    let sql = format!(
        "SELECT DISTINCT user_id FROM (SELECT user_id FROM user_external_ids \
         WHERE auth_provider = $1 LIMIT 500) s ORDER BY 1 LIMIT {MAX_EXAMPLES}"
    );
    let rows = client
        .query(&sql, &[&auth_provider])
        .await
        .context("listing users of an auth provider")?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

// ---------------------------------------------------------------------------------------------
// duplicate tokens

/// (table, column, what the duplicate means).
const DUPLICATE_CHECKS: &[(&str, &str, &str)] = &[
    (
        "access_tokens",
        "token",
        "access token strings used by more than one row",
    ),
    (
        "refresh_tokens",
        "token",
        "refresh token strings used by more than one row",
    ),
    (
        "access_tokens",
        "refresh_token_id",
        "refresh tokens referenced by more than one access token",
    ),
];

/// MAS requires unique access and refresh tokens and one access token per refresh token;
/// otherwise the final unique-index build fails after all the data was copied.
async fn duplicate_tokens(client: &Client) -> Result<Vec<Finding>> {
    let mut out = Vec::new();
    for (table, column, meaning) in DUPLICATE_CHECKS {
        if has_unique_index(client, table, column).await? {
            continue;
        }
        let sql = format!(
            "SELECT count(*), (array_agg(uid ORDER BY uid))[1:{MAX_EXAMPLES}] FROM \
             (SELECT min(user_id) AS uid FROM {table} WHERE {column} IS NOT NULL \
              GROUP BY {column} HAVING count(*) > 1) d"
        );
        let row = client
            .query_one(&sql, &[])
            .await
            .with_context(|| format!("looking for duplicate {table}.{column}"))?;
        let n = count(&row, 0);
        if n > 0 {
            let ex: Option<Vec<String>> = row.get(1);
            out.push(duplicates(n, table, column, meaning).with_examples(ex.unwrap_or_default()));
        }
    }
    Ok(out)
}

/// A valid, non-partial, single-column unique index makes duplicates impossible.
async fn has_unique_index(client: &Client, table: &str, column: &str) -> Result<bool> {
    let row = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
               JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0] \
               WHERE i.indrelid = $1::text::regclass AND i.indisunique AND i.indisvalid \
                 AND i.indnkeyatts = 1 AND i.indpred IS NULL AND i.indexprs IS NULL \
                 AND a.attname = $2)",
            &[&table, &column],
        )
        .await
        .with_context(|| format!("looking for a unique index on {table}.{column}"))?;
    Ok(row.get(0))
}

fn duplicates(n: u64, table: &str, column: &str, meaning: &str) -> Finding {
    Finding::new(
        ids::DUPLICATE_TOKENS,
        format!(
            "{meaning} (`{table}.{column}`); MAS's unique constraints would reject them at the end of the migration"
        ),
        n,
        format!(
            "in Synapse, delete all but one row per duplicated `{table}.{column}` (the examples name \
             the owning users; the affected sessions log in again)"
        ),
    )
    .in_table(format!("{table}.{column}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_pass_is_ordered_and_ungrouped_is_not() {
        let ext = dependent_sql(&DEPENDENTS[1]);
        assert!(ext.contains("GROUP BY 1 ORDER BY 1"), "{ext}");
        let dev = dependent_sql(&DEPENDENTS[2]);
        assert!(!dev.contains("GROUP BY"), "{dev}");
        assert!(dev.starts_with("SELECT NULL::text, count(*)"), "{dev}");
    }

    #[test]
    fn timestamp_bounds_are_those_of_the_copy_encoder() {
        use crate::db::copy_binary::pg_micros_from_unix_ms;
        let (lo, hi) = (-210_866_803_200_000_i64, 9_224_318_015_999_999_i64);
        assert!(pg_micros_from_unix_ms(lo).is_ok() && pg_micros_from_unix_ms(lo - 1).is_err());
        assert!(pg_micros_from_unix_ms(hi).is_ok() && pg_micros_from_unix_ms(hi + 1).is_err());
        let (lo_s, hi_s) = (-210_866_803_200_i64, 9_224_318_015_999_i64);
        assert!(pg_micros_from_unix_ms(lo_s * 1000).is_ok());
        assert!(pg_micros_from_unix_ms((lo_s - 1) * 1000).is_err());
        assert!(pg_micros_from_unix_ms(hi_s * 1000).is_ok());
        assert!(pg_micros_from_unix_ms((hi_s + 1) * 1000).is_err());
        let conds: Vec<String> = DEPENDENTS
            .iter()
            .flat_map(|d| d.extras.iter().map(|e| e.cond.to_owned()))
            .chain(user_checks().into_iter().map(|c| c.cond))
            .filter(|c| c.contains("NOT BETWEEN"))
            .collect();
        assert_eq!(conds.len(), 4);
        for c in conds {
            assert!(
                c.contains(&format!("BETWEEN {lo} AND {hi}"))
                    || c.contains(&format!("BETWEEN {lo_s} AND {hi_s}")),
                "{c}"
            );
        }
    }

    #[test]
    fn sums_add_every_group() {
        let g = vec![
            TableCounts {
                total: 2,
                orphans: 1,
                extras: vec![1],
                ..TableCounts::default()
            },
            TableCounts {
                total: 3,
                wrong_server: 2,
                extras: vec![4],
                ..TableCounts::default()
            },
        ];
        let s = TableCounts::sum(&g, 1);
        assert_eq!(
            (s.total, s.orphans, s.wrong_server, s.extras[0]),
            (5, 1, 2, 5)
        );
    }

    #[test]
    fn no_example_expression_shows_a_secret_column() {
        for dep in DEPENDENTS {
            for e in dep.extras {
                for secret in ["token", "password", "address"] {
                    assert!(
                        !e.example.replace("t.user_id", "").contains(secret),
                        "{}",
                        e.example
                    );
                }
            }
        }
        for c in user_checks() {
            assert!(!c.example.contains("password"), "{}", c.example);
        }
    }
}
