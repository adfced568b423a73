//! Devices, access tokens and refresh tokens: planned for the whole population first, then sorted
//! by creation time so that rows (and token ids) follow time, interleaving users as a real
//! homeserver's tables do.

use super::encode::UPPER;
use super::model::{Kind, NOW_MS, REFRESH_EPOCH_MS, USED_EPOCH_MS, User, stream};
use super::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceId {
    /// Ten uppercase letters, as Synapse generates them.
    Letters([u8; 10]),
    /// A hidden cross-signing key row: 0 master, 1 self-signing, 2 user-signing.
    CrossSigning(u8),
    /// `guest_device`.
    Guest,
}

#[derive(Clone, Debug)]
pub struct Device {
    pub t_ms: i64,
    pub seed: u64,
    pub user: u32,
    pub id: DeviceId,
}

#[derive(Clone, Debug)]
pub struct AccessToken {
    pub t_ms: i64,
    pub seed: u64,
    pub user: u32,
    pub device: Option<[u8; 10]>,
    /// Index into `Plan::refresh` (after sorting: id - 1).
    pub refresh: Option<u32>,
    /// The admin who "logs in as" this user (`puppets_user_id`).
    pub puppet_of: Option<u32>,
    pub used: Option<bool>,
    pub valid_until: Option<i64>,
    pub macaroon: bool,
}

#[derive(Clone, Debug)]
pub struct RefreshToken {
    pub t_ms: i64,
    pub seed: u64,
    pub user: u32,
    pub device: [u8; 10],
    /// Index into `Plan::refresh` of the token that replaced this one.
    pub next: Option<u32>,
}

#[derive(Default)]
pub struct Plan {
    pub devices: Vec<Device>,
    pub tokens: Vec<AccessToken>,
    pub refresh: Vec<RefreshToken>,
}

/// Share of all access tokens that are legacy macaroons (the oldest ones).
const MACAROON_SHARE: f64 = 0.13;
const MINUTE_MS: i64 = 60_000;
const DAY_MS: i64 = 86_400_000;

struct Builder {
    seed: u64,
    /// Per-user chances of the rare token kinds, so that even small populations have a few.
    puppet_chance: f64,
    deleted_device_chance: f64,
    plan: Plan,
    admins: Vec<u32>,
    puppet_targets: Vec<(u32, i64)>,
}

impl Plan {
    pub fn build(seed: u64, total: u32) -> Plan {
        let mut b = Builder {
            seed,
            puppet_chance: (4.0 / f64::from(total.max(1))).max(0.000_02),
            deleted_device_chance: (5.0 / f64::from(total.max(1))).max(0.000_05),
            plan: Plan::default(),
            admins: Vec::new(),
            puppet_targets: Vec::new(),
        };
        let expected = total as usize;
        b.plan.devices.reserve(expected * 21 / 10);
        b.plan.tokens.reserve(expected * 15 / 10);
        for index in 0..total {
            b.user(&User::attributes(seed, index, total));
        }
        b.add_puppets();
        let mut plan = b.plan;
        plan.sort();
        plan.mark_macaroons();
        plan
    }

    fn sort(&mut self) {
        self.devices.sort_unstable_by_key(|d| (d.t_ms, d.seed));
        let mut order: Vec<u32> = (0..self.refresh.len() as u32).collect();
        order.sort_unstable_by_key(|&i| {
            (self.refresh[i as usize].t_ms, self.refresh[i as usize].seed)
        });
        let mut rank = vec![0u32; order.len()];
        for (new, &old) in order.iter().enumerate() {
            rank[old as usize] = new as u32;
        }
        let mut sorted: Vec<RefreshToken> = order
            .iter()
            .map(|&old| self.refresh[old as usize].clone())
            .collect();
        for r in &mut sorted {
            r.next = r.next.map(|n| rank[n as usize]);
        }
        self.refresh = sorted;
        for t in &mut self.tokens {
            t.refresh = t.refresh.map(|n| rank[n as usize]);
        }
        self.tokens.sort_unstable_by_key(|t| (t.t_ms, t.seed));
    }

    /// The oldest non-refreshable tokens are macaroons (Synapse < 1.34).
    fn mark_macaroons(&mut self) {
        let mut left = (self.tokens.len() as f64 * MACAROON_SHARE).round() as usize;
        for t in &mut self.tokens {
            if left == 0 {
                break;
            }
            if t.refresh.is_none() {
                t.macaroon = true;
                left -= 1;
            }
        }
    }
}

impl Builder {
    fn user(&mut self, user: &User) {
        let mut rng = Rng::new(self.seed, stream::DEVICES, u64::from(user.index));
        match user.kind {
            Kind::Regular if user.is_active() => self.active_user(&mut rng, user),
            Kind::Guest if rng.chance(0.6) => {
                self.push_device(&mut rng, user, user.creation_ms() + 50, DeviceId::Guest)
            }
            Kind::Appservice if rng.chance(0.05) => {
                let t = device_time(&mut rng, user);
                let id = self.new_device_id(&mut rng, &[]);
                self.push_device(&mut rng, user, t, DeviceId::Letters(id));
                self.plain_token(&mut rng, user, t, Some(id));
            }
            _ => {}
        }
    }

    fn active_user(&mut self, rng: &mut Rng, user: &User) {
        if user.admin {
            self.admins.push(user.index);
        }
        let count = device_count(rng);
        let mut ids: Vec<[u8; 10]> = Vec::with_capacity(count);
        let mut first_t = i64::MAX;
        for _ in 0..count {
            let t = device_time(rng, user);
            first_t = first_t.min(t);
            let id = self.new_device_id(rng, &ids);
            ids.push(id);
            self.push_device(rng, user, t, DeviceId::Letters(id));
            self.device_tokens(rng, user, t, id);
        }
        if count > 0 && rng.chance(0.033) {
            for key in 0..3 {
                self.push_device(
                    rng,
                    user,
                    first_t + 1 + i64::from(key),
                    DeviceId::CrossSigning(key),
                );
            }
        }
        self.extra_tokens(rng, user, &ids);
    }

    /// Deviceless tokens, tokens of deleted devices, and candidates for admin puppeting.
    fn extra_tokens(&mut self, rng: &mut Rng, user: &User, ids: &[[u8; 10]]) {
        if rng.chance(0.0205) {
            let t = device_time(rng, user);
            self.plain_token(rng, user, t, None);
        }
        if rng.chance(self.deleted_device_chance) {
            let t = device_time(rng, user);
            let gone = self.new_device_id(rng, ids);
            self.plain_token(rng, user, t, Some(gone));
        }
        if rng.chance(self.puppet_chance) {
            let t = device_time(rng, user);
            self.puppet_targets.push((user.index, t));
        }
    }

    fn add_puppets(&mut self) {
        if self.admins.is_empty() {
            return;
        }
        for k in 0..self.puppet_targets.len() {
            let (user, t) = self.puppet_targets[k];
            let mut rng = Rng::new(self.seed, stream::DEVICES, u64::from(u32::MAX) + k as u64);
            let admin = *rng.pick(&self.admins);
            self.plan.tokens.push(AccessToken {
                t_ms: t,
                seed: rng.next_u64(),
                user,
                device: None,
                refresh: None,
                puppet_of: Some(admin),
                used: Some(true),
                valid_until: None,
                macaroon: false,
            });
        }
    }

    fn new_device_id(&self, rng: &mut Rng, taken: &[[u8; 10]]) -> [u8; 10] {
        loop {
            let mut id = [0u8; 10];
            for c in &mut id {
                *c = *rng.pick(UPPER);
            }
            if !taken.contains(&id) {
                return id;
            }
        }
    }

    fn push_device(&mut self, rng: &mut Rng, user: &User, t_ms: i64, id: DeviceId) {
        self.plan.devices.push(Device {
            t_ms,
            seed: rng.next_u64(),
            user: user.index,
            id,
        });
    }

    fn device_tokens(&mut self, rng: &mut Rng, user: &User, t: i64, id: [u8; 10]) {
        let roll = rng.unit();
        if t >= REFRESH_EPOCH_MS && roll < 0.062 {
            self.refresh_chain(rng, user, t, id);
        } else if roll < 0.69 {
            self.plain_token(rng, user, t, Some(id));
        }
    }

    fn plain_token(&mut self, rng: &mut Rng, user: &User, t: i64, device: Option<[u8; 10]>) {
        let used = (t >= USED_EPOCH_MS).then(|| rng.chance(0.85));
        let valid_until = rng.chance(0.022).then(|| {
            t + if rng.chance(0.5) {
                7 * DAY_MS
            } else {
                90 * DAY_MS
            }
        });
        self.plan.tokens.push(AccessToken {
            t_ms: t,
            seed: rng.next_u64(),
            user: user.index,
            device,
            refresh: None,
            puppet_of: None,
            used,
            valid_until,
            macaroon: false,
        });
    }

    /// One login that refreshed `len - 1` times. Every superseded access token was used; the
    /// newest one may not have been yet (then its predecessor pair is still live too).
    fn refresh_chain(&mut self, rng: &mut Rng, user: &User, t0: i64, device: [u8; 10]) {
        let len = match rng.unit() {
            r if r < 0.70 => 1,
            r if r < 0.92 => 2,
            _ => 3,
        };
        let mut t = t0;
        for step in 0..len {
            let index = self.plan.refresh.len() as u32;
            let last = step + 1 == len;
            self.plan.refresh.push(RefreshToken {
                t_ms: t,
                seed: rng.next_u64(),
                user: user.index,
                device,
                next: (!last).then_some(index + 1),
            });
            self.plan.tokens.push(AccessToken {
                t_ms: t,
                seed: rng.next_u64(),
                user: user.index,
                device: Some(device),
                refresh: Some(index),
                puppet_of: None,
                used: Some(!last || rng.chance(0.7)),
                valid_until: Some(t + 5 * MINUTE_MS),
                macaroon: false,
            });
            t = (t + rng.range(5 * MINUTE_MS, 3 * DAY_MS)).min(NOW_MS - 1);
        }
    }
}

/// 0–10 devices, mean ≈ 2.0.
fn device_count(rng: &mut Rng) -> usize {
    const CDF: [(f64, usize); 7] = [
        (0.24, 0),
        (0.51, 1),
        (0.70, 2),
        (0.82, 3),
        (0.89, 4),
        (0.93, 5),
        (0.955, 6),
    ];
    let r = rng.unit();
    CDF.iter()
        .find(|(p, _)| r < *p)
        .map(|&(_, n)| n)
        .unwrap_or_else(|| 7 + rng.below(4) as usize)
}

/// A moment between the user's registration and now.
fn device_time(rng: &mut Rng, user: &User) -> i64 {
    rng.range(user.creation_ms() + 1000, NOW_MS - 1000)
}
