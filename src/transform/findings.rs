//! What the transform notices about rows, by kind and Synapse table, with a few examples.
//!
//! In `migrate` a [`Problem`] stops the run at the first row that has it (MAS has seen
//! nothing); in `check`'s plan the same transform runs in counting mode and records every
//! problem and [`Note`] instead, which `check` turns into its data findings. So what `check`
//! reports about rows is, by construction, what `migrate` would do with them.

use std::collections::{BTreeMap, BTreeSet};

use crate::source::Entity;

/// Examples kept per finding: `check`'s own limit. The smallest are kept, so the result does
/// not depend on the order rows arrive in.
use crate::check::report::MAX_EXAMPLES;

/// A row `migrate` refuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Problem {
    /// A user id that is not `@<localpart>:<MAS matrix.homeserver>`.
    ServerName,
    /// A user with a NULL `name` or `creation_ts`.
    NullUserFields,
    /// A migrated user whose localpart holds `:`.
    LocalpartColon,
    /// A dependent row whose user does not exist.
    Orphan,
    /// A time `timestamptz` cannot hold.
    TimestampRange,
    /// An external id whose provider has no MAS provider (`check` reports these from its
    /// provider analysis, so the plan counts them as skipped instead).
    UnmappedProvider,
}

impl Problem {
    /// The `check` finding that reports it.
    pub fn finding_id(self) -> &'static str {
        use crate::check::ids;
        match self {
            Problem::ServerName => ids::SERVER_NAME,
            Problem::NullUserFields => ids::NULL_USER_FIELDS,
            Problem::LocalpartColon => ids::LOCALPART_COLON,
            Problem::Orphan => ids::ORPHAN_ROWS,
            Problem::TimestampRange => ids::TIMESTAMP_RANGE,
            Problem::UnmappedProvider => ids::UNMAPPED_PROVIDER,
        }
    }
}

/// Something a migrated or skipped row says that the operator should know before the cutover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Note {
    /// A guest user (migrated as a MAS guest).
    Guest,
    /// A password hash MAS's bcrypt scheme cannot verify.
    ForeignHash,
    /// A threepid that is not an email.
    NonEmail,
    /// A row skipped because its owner is an appservice user whose localpart holds `:`.
    AppserviceColon,
    /// An access token skipped because its device is hidden or `guest_device`.
    TokenHiddenDevice,
}

impl Note {
    /// The `check` warning that reports it.
    pub fn finding_id(self) -> &'static str {
        use crate::check::ids;
        match self {
            Note::Guest => ids::GUESTS,
            Note::ForeignHash => ids::NON_BCRYPT_HASHES,
            Note::NonEmail => ids::NON_EMAIL_THREEPIDS,
            Note::AppserviceColon => ids::APPSERVICE_COLON,
            Note::TokenHiddenDevice => ids::TOKEN_HIDDEN_DEVICE,
        }
    }
}

/// Rows `migrate` met that `check` reports as warnings, when it runs without
/// `--allow-warnings`: it stops before the swap, and MAS is left as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.0))]
pub struct Warnings(pub Findings);

fn describe(found: &Findings) -> String {
    let list: Vec<String> = found
        .0
        .iter()
        .filter_map(|((entity, kind), tally)| match kind {
            Kind::Note(n) => Some(format!(
                "{} in `{}` ({} so far, e.g. {})",
                n.finding_id(),
                entity.name(),
                tally.count,
                tally.examples.first().map_or("?", String::as_str)
            )),
            Kind::Problem(_) => None,
        })
        .collect();
    format!(
        "the rows hold what `syn2mas check` reports as warnings: {}",
        list.join("; ")
    )
}

/// A problem or a note.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Problem(Problem),
    Note(Note),
}

/// How often one kind was seen in one table, with examples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    pub count: u64,
    pub examples: BTreeSet<String>,
}

impl Tally {
    fn add(&mut self, example: &str) {
        self.count += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.insert(example.to_owned());
        } else if self
            .examples
            .last()
            .is_some_and(|last| example < last.as_str())
        {
            self.examples.insert(example.to_owned());
            self.examples.pop_last();
        }
    }

    fn merge(&mut self, other: &Tally) {
        self.count += other.count;
        self.examples.extend(other.examples.iter().cloned());
        while self.examples.len() > MAX_EXAMPLES {
            self.examples.pop_last();
        }
    }
}

/// Every kind seen, per Synapse table (in [`Entity`] order).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings(pub BTreeMap<(Entity, Kind), Tally>);

impl Findings {
    pub fn add(&mut self, entity: Entity, kind: Kind, example: &str) {
        self.0.entry((entity, kind)).or_default().add(example);
    }

    pub fn merge(&mut self, other: &Findings) {
        for (key, tally) in &other.0 {
            self.0.entry(*key).or_default().merge(tally);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_are_the_smallest_whatever_the_order() {
        let names: Vec<String> = (0..20).map(|i| format!("@u{i:02}:x")).collect();
        let mut a = Findings::default();
        let mut b = Findings::default();
        let kind = Kind::Note(Note::Guest);
        for n in names.iter().rev() {
            a.add(Entity::Users, kind, n);
        }
        for n in &names[10..] {
            b.add(Entity::Users, kind, n);
        }
        let mut c = Findings::default();
        for n in &names[..10] {
            c.add(Entity::Users, kind, n);
        }
        b.merge(&c);
        for f in [&a, &b] {
            let t = &f.0[&(Entity::Users, kind)];
            assert_eq!(t.count, 20);
            let ex: Vec<&str> = t.examples.iter().map(String::as_str).collect();
            assert_eq!(ex, ["@u00:x", "@u01:x", "@u02:x", "@u03:x", "@u04:x"]);
        }
    }
}
