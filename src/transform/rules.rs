//! The mapping's rules, stated once: why a Synapse row is not migrated (and in which order the
//! reasons are tried), what a user id must look like, and when a device's session was created.
//!
//! `migrate`, `check`'s plan and the preflight all run rows through these functions (in
//! `accounts` and `sessions`); only `verify` keeps its own statement of them in SQL, on
//! purpose, as the independent oracle that catches a mistake here.

use crate::source::reads::Owner;

/// Why a row is not migrated. `as_str` is the name in summaries, plans and JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Appservice,
    Deactivated,
    Guest,
    Hidden,
    GuestDevice,
    Puppet,
    DeviceDeleted,
    DeviceHidden,
    NoAccessToken,
    InconsistentPair,
    Superseded,
    UnmappedProvider,
    /// Only in `check`'s plan: a row `migrate` would refuse (the check reports it as an error).
    Refused,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Appservice => "appservice",
            Reason::Deactivated => "deactivated",
            Reason::Guest => "guest",
            Reason::Hidden => "hidden",
            Reason::GuestDevice => "guest_device",
            Reason::Puppet => "puppet",
            Reason::DeviceDeleted => "device_deleted",
            Reason::DeviceHidden => "device_hidden",
            Reason::NoAccessToken => "no_access_token",
            Reason::InconsistentPair => "inconsistent_pair",
            Reason::Superseded => "superseded",
            Reason::UnmappedProvider => "unmapped_provider",
            Reason::Refused => "refused",
        }
    }
}

/// What is known of a dependent row's owner: missing (an orphan, which `migrate` refuses), or
/// the reason its rows are skipped, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerState {
    Missing,
    Skipped(Reason),
    Migrated,
}

/// Devices and tokens follow their owner: appservice users, then deactivated, then guests are
/// not migrated with them.
pub fn owner_state(owner: Option<&Owner<'_>>) -> OwnerState {
    match owner {
        None => OwnerState::Missing,
        Some(o) if o.appservice => OwnerState::Skipped(Reason::Appservice),
        Some(o) if o.deactivated => OwnerState::Skipped(Reason::Deactivated),
        Some(o) if o.is_guest => OwnerState::Skipped(Reason::Guest),
        Some(_) => OwnerState::Migrated,
    }
}

/// Threepids and external ids follow their owner only when it is an appservice user (a
/// deactivated user keeps them in MAS).
pub fn account_owner_state(exists: bool, appservice: bool) -> OwnerState {
    match (exists, appservice) {
        (false, _) => OwnerState::Missing,
        (true, true) => OwnerState::Skipped(Reason::Appservice),
        (true, false) => OwnerState::Migrated,
    }
}

/// Why a device row is not a device MAS should have: hidden rows are cross-signing keys (and a
/// NULL `hidden` is not trusted to be a device), `guest_device` is what Synapse registers for
/// guests. Checked before the owner.
pub fn device_skip(device_id: &str, hidden: Option<bool>) -> Option<Reason> {
    if hidden != Some(false) {
        Some(Reason::Hidden)
    } else if device_id == "guest_device" {
        Some(Reason::GuestDevice)
    } else {
        None
    }
}

/// Whether `user_id` is `@<localpart>:<server>` for the MAS `matrix.homeserver` (`suffix` is
/// `:<server>`). A suffix comparison, not a split at the first `:`, so a server name with a port
/// works and a `:` inside the localpart is a separate problem (see [`localpart`]).
pub fn on_server(user_id: &str, suffix: &str) -> bool {
    user_id.starts_with('@') && user_id.len() > suffix.len() + 1 && user_id.ends_with(suffix)
}

/// The localpart of a user id that is [`on_server`], or `None` when it is empty or holds a `:`
/// (a MAS username cannot).
pub fn localpart<'a>(user_id: &'a str, suffix: &str) -> Option<&'a str> {
    let lp = user_id.get(1..user_id.len().checked_sub(suffix.len())?)?;
    (!lp.is_empty() && !lp.contains(':')).then_some(lp)
}

/// Whether the localpart of an appservice user's id holds a `:` (no MAS username could hold it;
/// such users and their rows are skipped, which `check` points out).
pub fn appservice_colon(user_id: &str, suffix: &str) -> bool {
    on_server(user_id, suffix) && localpart(user_id, suffix).is_none()
}

/// A password hash MAS's v1 scheme (bcrypt) can verify; NULL and empty mean "no password" to
/// Synapse and are not counted as foreign.
pub fn foreign_hash(hash: Option<&[u8]>) -> bool {
    hash.is_some_and(|h| {
        !h.is_empty()
            && ![&b"$2a$"[..], b"$2b$", b"$2y$"]
                .iter()
                .any(|p| h.starts_with(p))
    })
}

/// The medium MAS keeps as an email; every other medium goes to
/// `user_unsupported_third_party_ids`.
pub const EMAIL_MEDIUM: &str = "email";

/// A device's tokens, as far as its compat session needs them.
#[derive(Debug, Default, Clone, Copy)]
pub struct SessionTimes {
    /// Earliest `last_validated` of non-puppet tokens without a refresh token.
    plain_ms: Option<i64>,
    /// Earliest `last_validated` of any non-puppet token.
    any_ms: Option<i64>,
}

impl SessionTimes {
    /// Counts one of the device's tokens. Puppet tokens (an admin acting as the user) say
    /// nothing about when the user's session began.
    pub fn add(&mut self, puppet: bool, plain: bool, last_validated: Option<i64>) {
        let (false, Some(ms)) = (puppet, last_validated) else {
            return;
        };
        self.any_ms = Some(self.any_ms.map_or(ms, |a| a.min(ms)));
        if plain {
            self.plain_ms = Some(self.plain_ms.map_or(ms, |a| a.min(ms)));
        }
    }

    /// When the session was created: the earliest time of its plain tokens, else of any token;
    /// `None` when no token recorded one (the migration's own time is used then).
    pub fn session_ms(&self) -> Option<i64> {
        self.plain_ms.or(self.any_ms)
    }
}

/// What a token's device is, seen from the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenDevice {
    /// The token names no device.
    None,
    /// It names a device Synapse no longer has.
    Deleted,
    /// It names a device, which is skipped (hidden or `guest_device`) if the reason is set.
    Exists(Option<Reason>),
}

/// What becomes of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    Migrate,
    Skip(Reason),
    /// Its owner is missing: `migrate` refuses the row.
    Orphan,
}

/// Why an access token without a refresh token is not migrated, in upstream's order (puppets
/// and vanished devices first, so a puppet token of a deleted user is a skip, not an orphan).
pub fn access_token_fate(puppet: bool, device: TokenDevice, owner: OwnerState) -> Fate {
    if puppet {
        return Fate::Skip(Reason::Puppet);
    }
    if device == TokenDevice::Deleted {
        return Fate::Skip(Reason::DeviceDeleted);
    }
    owner_then_device(owner, device)
}

/// Facts about a refresh token and the access token it produced.
#[derive(Debug, Clone, Copy)]
pub struct Pair {
    /// The two name different users or devices.
    pub inconsistent: bool,
    /// The pair was refreshed and its successor's access token has been used: the client moved
    /// on. (If the successor was never used, both pairs stay valid, as in Synapse.)
    pub superseded: bool,
}

/// Why a refresh pair is not migrated (both halves share the fate).
pub fn refresh_pair_fate(pair: Pair, device: TokenDevice, owner: OwnerState) -> Fate {
    if pair.inconsistent {
        return Fate::Skip(Reason::InconsistentPair);
    }
    if matches!(device, TokenDevice::Deleted | TokenDevice::None) {
        return Fate::Skip(Reason::DeviceDeleted);
    }
    if pair.superseded {
        return Fate::Skip(Reason::Superseded);
    }
    owner_then_device(owner, device)
}

fn owner_then_device(owner: OwnerState, device: TokenDevice) -> Fate {
    match (owner, device) {
        (OwnerState::Missing, _) => Fate::Orphan,
        (OwnerState::Skipped(r), _) => Fate::Skip(r),
        (OwnerState::Migrated, TokenDevice::Exists(Some(_))) => Fate::Skip(Reason::DeviceHidden),
        (OwnerState::Migrated, _) => Fate::Migrate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SFX: &str = ":example.com";

    #[test]
    fn user_ids_and_localparts() {
        assert!(on_server("@a:example.com", SFX));
        assert!(!on_server("@:example.com", SFX));
        assert!(!on_server("a:example.com", SFX));
        assert!(!on_server("@a:other.example", SFX));
        assert!(on_server("@a:b:example.com", SFX));
        assert_eq!(localpart("@a:example.com", SFX), Some("a"));
        assert_eq!(localpart("@a:b:example.com", SFX), None);
        assert!(appservice_colon("@irc_a:b:example.com", SFX));
        assert!(!appservice_colon("@irc:example.com", SFX));
        // A server name with a port.
        assert_eq!(localpart("@a:h:8448", ":h:8448"), Some("a"));
    }

    #[test]
    fn session_times_prefer_plain_tokens_and_ignore_puppets() {
        let mut t = SessionTimes::default();
        assert_eq!(t.session_ms(), None);
        t.add(false, false, Some(5));
        assert_eq!(t.session_ms(), Some(5));
        t.add(false, true, Some(9));
        t.add(true, true, Some(1));
        t.add(false, true, None);
        assert_eq!(t.session_ms(), Some(9));
    }

    #[test]
    fn skip_orders() {
        let hidden = TokenDevice::Exists(Some(Reason::Hidden));
        let gone = TokenDevice::Deleted;
        // Puppets and vanished devices come before the owner, so they are never orphans.
        assert_eq!(
            access_token_fate(true, gone, OwnerState::Missing),
            Fate::Skip(Reason::Puppet)
        );
        assert_eq!(
            access_token_fate(false, gone, OwnerState::Missing),
            Fate::Skip(Reason::DeviceDeleted)
        );
        assert_eq!(
            access_token_fate(false, hidden, OwnerState::Missing),
            Fate::Orphan
        );
        assert_eq!(
            access_token_fate(false, hidden, OwnerState::Skipped(Reason::Guest)),
            Fate::Skip(Reason::Guest)
        );
        assert_eq!(
            access_token_fate(false, hidden, OwnerState::Migrated),
            Fate::Skip(Reason::DeviceHidden)
        );
        assert_eq!(
            access_token_fate(false, TokenDevice::None, OwnerState::Migrated),
            Fate::Migrate
        );
        let pair = Pair {
            inconsistent: false,
            superseded: true,
        };
        assert_eq!(
            refresh_pair_fate(pair, TokenDevice::None, OwnerState::Migrated),
            Fate::Skip(Reason::DeviceDeleted)
        );
        assert_eq!(
            refresh_pair_fate(pair, hidden, OwnerState::Missing),
            Fate::Skip(Reason::Superseded)
        );
        assert_eq!(
            refresh_pair_fate(
                Pair {
                    inconsistent: true,
                    superseded: false
                },
                gone,
                OwnerState::Missing
            ),
            Fate::Skip(Reason::InconsistentPair)
        );
    }

    #[test]
    fn devices_and_hashes() {
        assert_eq!(device_skip("D", None), Some(Reason::Hidden));
        assert_eq!(device_skip("D", Some(true)), Some(Reason::Hidden));
        assert_eq!(
            device_skip("guest_device", Some(false)),
            Some(Reason::GuestDevice)
        );
        assert_eq!(device_skip("D", Some(false)), None);
        assert!(!foreign_hash(None));
        assert!(!foreign_hash(Some(b"")));
        assert!(!foreign_hash(Some(b"$2b$12$abc")));
        assert!(foreign_hash(Some(b"$6$rounds")));
    }
}
