//! Every row the migration does not carry over, one by one, for `--report DIR`: who it belongs
//! to, the key that names it in Synapse (device id, medium and address, provider and subject,
//! token ids) and why. Never a token, hash or password.

use serde::Serialize;

use crate::source::Entity;
use crate::source::reads::{Device, ExternalId, Threepid, Token, User};

/// The row a skip is about (borrowed; turned into a [`SkippedRow`] only when reporting).
#[derive(Debug, Clone, Copy)]
pub enum RowRef<'r, 'a> {
    User(&'r User<'a>),
    Threepid(&'r Threepid<'a>),
    ExternalId(&'r ExternalId<'a>),
    Device(&'r Device<'a>),
    Token(&'r Token<'a>),
}

/// One line of a table's report file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SkippedRow {
    #[serde(skip)]
    pub entity: Option<Entity>,
    pub user_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// `access_tokens.id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_id: Option<i64>,
    /// `refresh_tokens.id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token_id: Option<i64>,
    /// The skip reason (`appservice`, `hidden`, …), or `refused: <finding id>` for a row
    /// `migrate` refuses.
    pub reason: String,
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl SkippedRow {
    /// The report line for `row`, as a row of `entity` (a refresh pair is reported in both
    /// token tables).
    pub fn new(entity: Entity, row: RowRef<'_, '_>, reason: String) -> Self {
        let base = SkippedRow {
            entity: Some(entity),
            reason,
            ..SkippedRow::default()
        };
        match row {
            RowRef::User(u) => SkippedRow {
                user_id: u.name.unwrap_or("(NULL name)").to_owned(),
                ..base
            },
            RowRef::Threepid(t) => SkippedRow {
                user_id: t.user_id.to_owned(),
                medium: Some(t.medium.to_owned()),
                address: Some(text(t.address)),
                ..base
            },
            RowRef::ExternalId(x) => SkippedRow {
                user_id: x.user_id.to_owned(),
                auth_provider: Some(x.auth_provider.to_owned()),
                subject: Some(text(x.external_id)),
                ..base
            },
            RowRef::Device(d) => SkippedRow {
                user_id: d.user_id.to_owned(),
                device_id: Some(d.device_id.to_owned()),
                ..base
            },
            RowRef::Token(t) => {
                let refresh = entity == Entity::RefreshTokens;
                SkippedRow {
                    user_id: if refresh {
                        t.rt_user_id.unwrap_or(t.user_id).to_owned()
                    } else {
                        t.user_id.to_owned()
                    },
                    device_id: if refresh { t.rt_device_id } else { t.device_id }
                        .map(str::to_owned),
                    access_token_id: t.id,
                    refresh_token_id: t.rt_id,
                    ..base
                }
            }
        }
    }
}
