//! What MAS defines on the eight target tables, read from PostgreSQL's catalogue so the shadow
//! tables get exactly the same indexes and constraints, whatever MAS version created them.

use anyhow::{Context, bail};
use tokio_postgres::Client;

use super::tables::Target;

/// An index that does not back a constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexDef {
    pub target: Target,
    /// Quoted name, as it must be after the swap.
    pub name: String,
    /// `UNIQUE ` or empty.
    pub unique: bool,
    /// Everything after `ON <table>`: ` USING btree (lower(username)) WHERE …`.
    pub tail: String,
    /// A key column (or expression) is text-like: its sort compares strings, several times
    /// the cost of uuids or timestamps, which the rebuild schedule weighs.
    pub textual: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConstraintKind {
    PrimaryKey,
    Unique,
    ForeignKey,
    Check,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConstraintDef {
    pub target: Target,
    pub kind: ConstraintKind,
    /// Quoted name.
    pub name: String,
    /// `pg_get_constraintdef` text, references to target tables rewritten to shadow names.
    pub definition: String,
    /// For primary keys and unique constraints: the backing index, to build it as an index
    /// first (that can run next to other index builds) and attach it afterwards.
    pub index_tail: Option<String>,
    /// The backing index sorts text (see `IndexDef::textual`).
    pub index_textual: bool,
    /// `DEFERRABLE …` clause to keep when attaching a unique index.
    pub deferral: String,
    /// Target tables this constraint references (foreign keys between target tables).
    pub references: Vec<Target>,
}

impl Definitions {
    /// The foreign keys to MAS tables outside the eight, which the swap adds.
    pub fn outgoing_keys(&self) -> Vec<super::shadow::OutgoingKey> {
        self.constraints
            .iter()
            .filter(|c| c.is_outgoing())
            .map(|c| super::shadow::OutgoingKey {
                target: c.target,
                name: c.name.clone(),
                definition: c.definition.clone(),
            })
            .collect()
    }
}

impl ConstraintDef {
    /// A foreign key to a MAS table outside the eight: added in the swap, not on the shadow
    /// table (see `shadow::OutgoingKey`).
    pub fn is_outgoing(&self) -> bool {
        self.kind == ConstraintKind::ForeignKey && self.references.is_empty()
    }
}

/// Whether index `i` has a key with a collation (text-like columns and expressions).
const TEXTUAL: &str =
    "EXISTS (SELECT 1 FROM unnest(i.indcollation::oid[]) AS coll WHERE coll <> 0)";

/// All definitions of the eight tables.
#[derive(Debug, Clone, Default)]
pub struct Definitions {
    pub indexes: Vec<IndexDef>,
    pub constraints: Vec<ConstraintDef>,
}

/// Reads the definitions of every target table in the current schema.
pub async fn read(client: &Client) -> anyhow::Result<Definitions> {
    let names: Vec<&str> = Target::ALL.iter().map(|t| t.name()).collect();
    let mut defs = Definitions::default();
    let rows = client
        .query(
            &format!("SELECT c.relname, quote_ident(ic.relname), i.indisunique, pg_get_indexdef(i.indexrelid),
                    format('%I.%I', n.nspname, c.relname), {TEXTUAL}
               FROM pg_index i
               JOIN pg_class c ON c.oid = i.indrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               JOIN pg_class ic ON ic.oid = i.indexrelid
              WHERE n.nspname = current_schema() AND c.relname = ANY($1)
                AND NOT EXISTS (SELECT 1 FROM pg_constraint k
                                 WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid
                                   AND k.contype IN ('p', 'u', 'x'))
              ORDER BY c.relname, ic.relname"),
            &[&names],
        )
        .await
        .context("reading MAS index definitions")?;
    for r in rows {
        let target = target_of(r.get(0))?;
        let name: String = r.get(1);
        let def: String = r.get(3);
        let qualified: String = r.get(4);
        let tail = index_tail(&def, &name, &qualified)?;
        defs.indexes.push(IndexDef {
            target,
            name,
            unique: r.get(2),
            tail,
            textual: r.get(5),
        });
    }
    let rows = client
        .query(
            &format!("SELECT c.relname, quote_ident(k.conname), k.contype::text, pg_get_constraintdef(k.oid),
                    CASE WHEN k.contype IN ('p', 'u') THEN pg_get_indexdef(k.conindid) END,
                    format('%I.%I', n.nspname, c.relname),
                    CASE WHEN k.contype IN ('p', 'u') THEN quote_ident(ic.relname) END,
                    k.condeferrable, k.condeferred,
                    CASE WHEN k.contype = 'f' THEN rc.relname END,
                    CASE WHEN k.contype = 'f' THEN k.confrelid::regclass::text END,
                    coalesce((SELECT {TEXTUAL} FROM pg_index i WHERE i.indexrelid = k.conindid), false)
               FROM pg_constraint k
               JOIN pg_class c ON c.oid = k.conrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_class ic ON ic.oid = k.conindid
               LEFT JOIN pg_class rc ON rc.oid = k.confrelid AND rc.relnamespace = c.relnamespace
              WHERE n.nspname = current_schema() AND c.relname = ANY($1)
                AND k.contype IN ('p', 'u', 'f', 'c', 'x')
              ORDER BY c.relname, k.conname"),
            &[&names],
        )
        .await
        .context("reading MAS constraint definitions")?;
    for r in rows {
        defs.constraints.push(constraint(&r)?);
    }
    Ok(defs)
}

fn constraint(r: &tokio_postgres::Row) -> anyhow::Result<ConstraintDef> {
    let target = target_of(r.get(0))?;
    let name: String = r.get(1);
    let kind = match r.get::<_, String>(2).as_str() {
        "p" => ConstraintKind::PrimaryKey,
        "u" => ConstraintKind::Unique,
        "f" => ConstraintKind::ForeignKey,
        "c" => ConstraintKind::Check,
        other => bail!(
            "MAS table `{}` has a constraint {name} of kind `{other}` that syn2mas cannot rebuild",
            target.name()
        ),
    };
    let mut definition: String = r.get(3);
    let mut references = Vec::new();
    let index_tail = match r.get::<_, Option<String>>(4) {
        Some(def) => Some(index_tail(
            &def,
            &r.get::<_, String>(6),
            &r.get::<_, String>(5),
        )?),
        None => None,
    };
    if let (Some(rel), Some(shown)) = (
        r.get::<_, Option<String>>(9),
        r.get::<_, Option<String>>(10),
    ) && let Some(referenced) = Target::ALL.into_iter().find(|t| t.name() == rel)
    {
        let from = format!("REFERENCES {shown}(");
        if !definition.contains(&from) {
            bail!("unexpected definition of MAS constraint {name}: {definition}");
        }
        definition = definition.replacen(
            &from,
            &format!("REFERENCES {}(", super::shadow::shadow_name(referenced)),
            1,
        );
        references.push(referenced);
    }
    let deferral = match (r.get::<_, bool>(7), r.get::<_, bool>(8)) {
        (true, true) => " DEFERRABLE INITIALLY DEFERRED",
        (true, false) => " DEFERRABLE",
        _ => "",
    };
    Ok(ConstraintDef {
        target,
        kind,
        name,
        definition,
        index_tail,
        index_textual: r.get(11),
        deferral: deferral.to_owned(),
        references,
    })
}

fn target_of(relname: &str) -> anyhow::Result<Target> {
    Target::ALL
        .into_iter()
        .find(|t| t.name() == relname)
        .with_context(|| format!("unexpected table `{relname}`"))
}

/// The part of a `pg_get_indexdef` text after `ON <table>`, so it can be replayed on another
/// table: PostgreSQL prints `CREATE [UNIQUE] INDEX <name> ON [ONLY] <schema>.<table> USING …`.
fn index_tail(def: &str, name: &str, qualified_table: &str) -> anyhow::Result<String> {
    for unique in ["UNIQUE ", ""] {
        for only in ["ONLY ", ""] {
            let prefix = format!("CREATE {unique}INDEX {name} ON {only}{qualified_table} ");
            if let Some(tail) = def.strip_prefix(&prefix) {
                return Ok(format!(" {tail}"));
            }
        }
    }
    bail!("unexpected MAS index definition: {def}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_tail_strips_the_head() {
        assert_eq!(
            index_tail(
                "CREATE INDEX users_lower_username_idx ON public.users USING btree (lower(username))",
                "users_lower_username_idx",
                "public.users"
            )
            .unwrap(),
            " USING btree (lower(username))"
        );
        assert_eq!(
            index_tail(
                "CREATE UNIQUE INDEX users_pkey ON public.users USING btree (user_id)",
                "users_pkey",
                "public.users"
            )
            .unwrap(),
            " USING btree (user_id)"
        );
        assert!(index_tail("CREATE INDEX x ON other.t USING btree (a)", "x", "public.t").is_err());
    }
}
