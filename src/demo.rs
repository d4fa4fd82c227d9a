//! `patron demo`: a realistic multi-channel data set with known ground truth.
//!
//! People shop in stores, use the app, the mini-program and the website, call the call center
//! and click ads. Each channel sees them through different identifiers, written the way real
//! exports write them (`138 0013 8000`, `+86-138...`, `0086...`, upper-case emails with spaces),
//! cashiers type placeholder phones, families share a tablet, and a few records are broken
//! beyond repair. The generator knows who is who, so the unified customers can be scored: pairwise
//! precision and recall of "these two touchpoints are the same customer".

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_distr::{Beta, Distribution, Exp, Gamma};
use serde::Serialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// What the generator makes.
#[derive(Clone, Debug, Serialize)]
pub struct DemoConfig {
    /// How many people.
    pub people: usize,
    /// Mean touchpoints per person.
    pub touchpoints_per_person: f64,
    /// Share of records broken beyond repair (a phone with digits missing), which must be
    /// quarantined.
    pub broken_rate: f64,
    /// Seed: the same seed gives the same data set.
    pub seed: u64,
    /// The latest time a touchpoint may have; the data set spans the two years before it.
    pub until: DateTime<Utc>,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            people: 10_000,
            touchpoints_per_person: 12.0,
            broken_rate: 0.002,
            seed: 42,
            until: Utc::now(),
        }
    }
}

/// A generated record and the person it truly belongs to.
#[derive(Clone, Debug)]
pub struct DemoRecord {
    /// The person (ground truth).
    pub person: u32,
    /// Whether it was broken on purpose and must be refused.
    pub broken: bool,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// The record, in Patron's shape.
    pub record: Value,
}

struct Person {
    id: u32,
    phone: String,
    second_phone: Option<String>,
    email: Option<String>,
    login: Option<String>,
    member_id: Option<String>,
    card: Option<String>,
    devices: Vec<String>,
    shared_device: Option<String>,
    cookie: String,
    openid: String,
    unionid: Option<String>,
    city: &'static str,
    name: String,
}

const CITIES: [&str; 8] = [
    "Shanghai",
    "Beijing",
    "Shenzhen",
    "Guangzhou",
    "Hangzhou",
    "Chengdu",
    "Wuhan",
    "Nanjing",
];
/// Product categories of generated orders and views.
pub(crate) const CATEGORIES: [&str; 8] = [
    "skincare",
    "fragrance",
    "makeup",
    "haircare",
    "bodycare",
    "menswear",
    "shoes",
    "bags",
];
const SURNAMES: [&str; 10] = ["王", "李", "张", "刘", "陈", "杨", "黄", "赵", "吴", "周"];
const GIVEN: [&str; 10] = ["伟", "芳", "娜", "敏", "静", "丽", "强", "磊", "洋", "艳"];
const PLACEHOLDER_PHONE: &str = "13800138000";

/// Writes a mainland mobile number the way one of many export formats would.
fn noisy_phone(rng: &mut StdRng, phone: &str) -> String {
    let n = &phone[3..]; // the 11 national digits after +86
    match rng.gen_range(0..7) {
        0 => n.to_owned(),
        1 => format!("{} {} {}", &n[..3], &n[3..7], &n[7..]),
        2 => format!("{}-{}-{}", &n[..3], &n[3..7], &n[7..]),
        3 => format!("+86 {n}"),
        4 => format!("0086{n}"),
        5 => format!("86{n}"),
        _ => format!(" +86-{}-{}-{} ", &n[..3], &n[3..7], &n[7..]),
    }
}

fn noisy_email(rng: &mut StdRng, email: &str) -> String {
    match rng.gen_range(0..4) {
        0 => email.to_uppercase(),
        1 => format!("  {email} "),
        2 => {
            let (local, domain) = email.split_once('@').unwrap_or((email, ""));
            format!("{}@{}", capitalize(local), domain.to_uppercase())
        }
        _ => email.to_owned(),
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    chars
        .next()
        .map(|c| c.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

fn new_person(rng: &mut StdRng, id: u32) -> Person {
    // Distinct numbers per person: 139/158/186 blocks with the person id in the last digits.
    let prefix = ["139", "158", "186"][(id % 3) as usize];
    let phone = format!("+86{prefix}{:08}", id / 3 + 10_000_000);
    Person {
        id,
        phone,
        second_phone: rng
            .gen_bool(0.08)
            .then(|| format!("+86137{:08}", id + 20_000_000)),
        email: rng.gen_bool(0.6).then(|| format!("user{id}@example.cn")),
        login: rng.gen_bool(0.5).then(|| format!("u{id:07}")),
        member_id: rng.gen_bool(0.5).then(|| format!("M{id:08}")),
        card: rng.gen_bool(0.5).then(|| format!("MC{id:08}")),
        devices: (0..rng.gen_range(1..=2))
            .map(|d| format!("{:08x}-{:04x}-4000-8000-{:012x}", id, d, rng.gen::<u32>()))
            .collect(),
        shared_device: None,
        cookie: format!("ck{:016x}", rng.gen::<u64>()),
        openid: format!(
            "o{:027x}",
            (u128::from(id) << 64) | u128::from(rng.gen::<u64>())
        ),
        unionid: rng.gen_bool(0.5).then(|| format!("un{id:010}")),
        city: CITIES[rng.gen_range(0..CITIES.len())],
        name: format!(
            "{}{}",
            SURNAMES[rng.gen_range(0..SURNAMES.len())],
            GIVEN[rng.gen_range(0..GIVEN.len())]
        ),
    }
}

struct Builder<'a> {
    rng: &'a mut StdRng,
    until: DateTime<Utc>,
    /// The current person's active time: from their first touchpoint to when they drop out.
    active: (DateTime<Utc>, DateTime<Utc>),
    /// The current person's spend level (mean 1): their prices are multiplied by it.
    spend: f64,
    /// When set, the time of the next touchpoint (a step of a session).
    next_at: Option<DateTime<Utc>>,
}

impl Builder<'_> {
    /// A new person: joins at a uniform time in the two years, stays active for an
    /// exponential time (mean one year), spends at a Gamma(2, 0.5) level. Customers thus
    /// differ in how long they buy and how much, as lifetime-value models assume.
    fn start_person(&mut self) {
        let join = self.until - TimeDelta::seconds(self.rng.gen_range(0..730 * 86_400));
        let u: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        let life = TimeDelta::seconds((-u.ln() * 365.0 * 86_400.0) as i64);
        self.active = (join, (join + life).min(self.until));
        let (u1, u2): (f64, f64) = (
            self.rng.gen_range(f64::EPSILON..1.0),
            self.rng.gen_range(f64::EPSILON..1.0),
        );
        self.spend = -(u1.ln() + u2.ln()) * 0.5;
        self.next_at = None;
    }

    /// The current person's purchase times: from a first purchase one exponential wait after
    /// they join, one purchase after another at a rate drawn from Gamma(2, scale) (a mean of one
    /// purchase per 45 days at 12 touchpoints a person), dropping out after each repeat purchase
    /// with a probability drawn from Beta(2, 6), until the data set ends. These are the BG/NBD
    /// model's assumptions, with r = 2, alpha = 90 days, a = 2, b = 6 at 12 touchpoints.
    fn purchases(&mut self, touchpoints_per_person: f64) -> Vec<DateTime<Utc>> {
        let scale = touchpoints_per_person.max(1.0) / 12.0 / 90.0;
        let rate: f64 = Gamma::new(2.0, scale).map_or(1.0 / 45.0, |g| g.sample(self.rng));
        let dropout: f64 = Beta::new(2.0, 6.0).map_or(0.25, |d| d.sample(self.rng));
        let wait = Exp::new(rate.max(1e-6)).map_err(|_| ());
        let mut times = Vec::new();
        let Ok(wait) = wait else {
            return times;
        };
        let mut at = self.active.0;
        loop {
            let days: f64 = wait.sample(self.rng);
            at += TimeDelta::seconds((days * 86_400.0).min(1e10) as i64);
            if at > self.until {
                break;
            }
            times.push(at);
            // Dropping out happens after a repeat purchase, never right after the first.
            if times.len() > 1 && self.rng.gen_bool(dropout.clamp(0.0, 1.0)) {
                break;
            }
        }
        times
    }

    fn time(&mut self) -> DateTime<Utc> {
        if let Some(at) = self.next_at.take() {
            return at;
        }
        let (from, to) = self.active;
        let span = (to - from).num_seconds().max(1);
        from + TimeDelta::seconds(self.rng.gen_range(0..span))
    }

    fn base(
        &mut self,
        event_type: &str,
        channel: &str,
        source: &str,
        ids: Map<String, Value>,
    ) -> (DateTime<Utc>, Value) {
        let at = self.time();
        // Stores write local time with +08:00; online systems write UTC.
        let occurred = if channel == "store" {
            at.with_timezone(
                &chrono::FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| unreachable!()),
            )
            .to_rfc3339()
        } else {
            at.to_rfc3339()
        };
        let id = Uuid::from_u128(self.rng.gen::<u128>() & !(0xf << 76) | (0x4 << 76));
        (
            at,
            json!({
                "event_id": id.to_string(),
                "type": event_type,
                "channel": channel,
                "source": source,
                "occurred_at": occurred,
                "identifiers": Value::Object(ids),
            }),
        )
    }

    fn order(&mut self) -> Map<String, Value> {
        let mut skus: Vec<u64> = (0..self.rng.gen_range(1..=3))
            .map(|_| self.rng.gen_range(0..200))
            .collect();
        // Products come in pairs (0 and 1, 2 and 3, ...) often bought together.
        if self.rng.gen_bool(0.3) {
            skus.push(skus[0] ^ 1);
        }
        skus.dedup();
        let spend = self.spend;
        let items: Vec<Value> = skus
            .into_iter()
            .map(|sku| {
                let price = ((1_000 + (sku * 7_919) % 90_000) as f64 * spend)
                    .round()
                    .max(100.0) as u64;
                json!({
                    "sku": format!("SKU-{sku:05}"),
                    "category": CATEGORIES[(sku % 8) as usize],
                    "quantity": self.rng.gen_range(1..=3),
                    "unit_price_minor": price,
                    "discount_minor": if self.rng.gen_bool(0.25) { price / 10 } else { 0 },
                })
            })
            .collect();
        let mut m = Map::new();
        m.insert(
            "order_id".into(),
            json!(format!("O{:012}", self.rng.gen::<u32>())),
        );
        m.insert("currency".into(), json!("CNY"));
        m.insert("items".into(), json!(items));
        m
    }
}

fn ids(pairs: &[(&str, Option<String>)]) -> Map<String, Value> {
    pairs
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref()
                .map(|v| ((*k).to_owned(), Value::from(v.as_str())))
        })
        .collect()
}

/// Generates the touchpoints of people `first..first + count`, in time order.
pub fn generate_people(config: &DemoConfig, first: usize, count: usize) -> Vec<DemoRecord> {
    let mut rng =
        StdRng::seed_from_u64(config.seed ^ (first as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut people: Vec<Person> = (first..first + count)
        .map(|id| new_person(&mut rng, u32::try_from(id).unwrap_or(u32::MAX)))
        .collect();
    // Families of two to four share a tablet.
    let mut i = 0;
    while i + 4 <= people.len() {
        if rng.gen_bool(0.05) {
            let size = rng.gen_range(2..=4);
            let tablet = format!("tablet-{:016x}", rng.gen::<u64>());
            for p in &mut people[i..i + size] {
                p.shared_device = Some(tablet.clone());
            }
            i += size;
        } else {
            i += 1;
        }
    }

    let mut records = Vec::new();
    let mut b = Builder {
        rng: &mut rng,
        until: config.until,
        active: (config.until, config.until),
        spend: 1.0,
        next_at: None,
    };
    for p in &people {
        b.start_person();
        let n =
            1 + (b.rng.gen::<f64>() * 2.0 * (config.touchpoints_per_person - 1.0)).round() as usize;
        // Introductions (the first sighting of each identifier beside a core one) are never
        // broken; other touchpoints are, at the configured rate.
        let mut introducing = true;
        let mut push = |b: &mut Builder<'_>,
                        (at, mut record): (DateTime<Utc>, Value),
                        extra: Map<String, Value>,
                        introducing: bool| {
            for (k, v) in extra {
                record[k] = v;
            }
            let broken = !introducing && b.rng.gen_bool(config.broken_rate);
            if broken {
                record["identifiers"] =
                    json!({"phone": format!("1391234{}", b.rng.gen_range(0..999))});
            }
            records.push(DemoRecord {
                person: p.id,
                broken,
                occurred_at: at,
                record,
            });
        };
        // Introductions: every auxiliary identifier is seen once beside a core one, and a
        // second phone first comes with the member id at the membership desk.
        for device in &p.devices {
            let m = ids(&[
                ("device_id", Some(device.to_uppercase())),
                ("phone", Some(noisy_phone(b.rng, &p.phone))),
                ("login_id", p.login.clone()),
            ]);
            let r = b.base("screen_viewed", "app", "app", m);
            push(
                &mut b,
                r,
                Map::from_iter([("screen".into(), json!("login"))]),
                introducing,
            );
        }
        let m = ids(&[
            ("cookie", Some(p.cookie.clone())),
            ("phone", Some(noisy_phone(b.rng, &p.phone))),
            ("email", p.email.as_ref().map(|e| noisy_email(b.rng, e))),
        ]);
        let r = b.base("page_viewed", "web", "website", m);
        push(
            &mut b,
            r,
            Map::from_iter([("url".into(), json!("/account"))]),
            introducing,
        );
        let m = ids(&[
            ("wechat_openid", Some(p.openid.clone())),
            ("wechat_unionid", p.unionid.clone()),
            ("phone", Some(noisy_phone(b.rng, &p.phone))),
        ]);
        let r = b.base("traits_updated", "mini_program", "mini-program", m);
        push(
            &mut b,
            r,
            Map::from_iter([("traits".into(), json!({"name": p.name, "city": p.city}))]),
            introducing,
        );
        if let Some(card) = &p.card {
            let m = ids(&[
                ("member_card", Some(card.clone())),
                ("member_id", p.member_id.clone()),
                ("phone", Some(noisy_phone(b.rng, &p.phone))),
            ]);
            let r = b.base(
                "membership_desk_contact",
                "membership_desk",
                "member-desk",
                m,
            );
            push(
                &mut b,
                r,
                Map::from_iter([("topic".into(), json!("new card"))]),
                introducing,
            );
        }
        if let Some(second) = &p.second_phone {
            // The member updates their phone at the desk: member id, old and new number.
            let mut m = ids(&[("member_id", p.member_id.clone())]);
            m.insert(
                "phone".into(),
                json!([noisy_phone(b.rng, &p.phone), noisy_phone(b.rng, second)]),
            );
            let r = b.base(
                "membership_desk_contact",
                "membership_desk",
                "member-desk",
                m,
            );
            push(
                &mut b,
                r,
                Map::from_iter([("topic".into(), json!("update phone"))]),
                introducing,
            );
        }
        introducing = false;
        // Orders follow the BG/NBD story: purchases at the person's own Poisson rate from their
        // first, each followed by dropping out with the person's own probability; the other
        // touchpoints fall anywhere in the active time.
        let mut plan: Vec<(u32, Option<DateTime<Utc>>)> = b
            .purchases(config.touchpoints_per_person)
            .into_iter()
            .map(|at| (if b.rng.gen_bool(0.7) { 0 } else { 75 }, Some(at)))
            .collect();
        let orders = plan.len();
        for _ in 0..n.saturating_sub(orders) {
            // Any kind but an order: 30..=74 and 83..=99.
            let k = b.rng.gen_range(30..92);
            plan.push((if k >= 75 { k + 8 } else { k }, None));
        }
        for (kind, at) in plan {
            b.next_at = at;
            let phone_now = p
                .second_phone
                .as_ref()
                .filter(|_| b.rng.gen_bool(0.3))
                .unwrap_or(&p.phone)
                .clone();
            let (r, extra) = match kind {
                0..=29 => {
                    // Cashiers type a placeholder phone for members who show their card.
                    let placeholder = p.card.is_some() && b.rng.gen_bool(0.05);
                    let phone = if placeholder {
                        PLACEHOLDER_PHONE.to_owned()
                    } else {
                        noisy_phone(b.rng, &phone_now)
                    };
                    let card = p
                        .card
                        .clone()
                        .filter(|_| placeholder || b.rng.gen_bool(0.7));
                    let m = ids(&[("phone", Some(phone)), ("member_card", card)]);
                    let r = b.base("order_placed", "store", "pos", m);
                    let mut extra = b.order();
                    extra.insert(
                        "store_id".into(),
                        json!(format!(
                            "{}-{:02}",
                            &p.city[..2].to_uppercase(),
                            b.rng.gen_range(0..20)
                        )),
                    );
                    (r, extra)
                }
                30..=54 => {
                    let device = p.devices.choose(b.rng).cloned();
                    let login = p.login.clone().filter(|_| b.rng.gen_bool(0.6));
                    let m = ids(&[("device_id", device), ("login_id", login)]);
                    let r = b.base("screen_viewed", "app", "app", m);
                    (
                        r,
                        Map::from_iter([(
                            "screen".into(),
                            json!(format!("product/{}", b.rng.gen_range(0..200))),
                        )]),
                    )
                }
                55..=64 => {
                    let m = ids(&[("wechat_openid", Some(p.openid.clone()))]);
                    let r = b.base("page_viewed", "mini_program", "mini-program", m);
                    (r, Map::from_iter([("url".into(), json!("pages/home"))]))
                }
                65..=74 => {
                    let email = p
                        .email
                        .as_ref()
                        .filter(|_| b.rng.gen_bool(0.3))
                        .map(|e| noisy_email(b.rng, e));
                    let m = ids(&[("cookie", Some(p.cookie.clone())), ("email", email)]);
                    let r = b.base("page_viewed", "web", "website", m);
                    (
                        r,
                        Map::from_iter([(
                            "url".into(),
                            json!(format!("/p/{}", b.rng.gen_range(0..200))),
                        )]),
                    )
                }
                75..=82 => {
                    let email = p.email.as_ref().map(|e| noisy_email(b.rng, e));
                    let m = ids(&[
                        ("phone", Some(noisy_phone(b.rng, &phone_now))),
                        ("email", email),
                        ("cookie", Some(p.cookie.clone())),
                    ]);
                    // An online order ends a session: a product viewed in the app and put in
                    // the cart minutes before (half the time), then bought on the web.
                    let at = b.time();
                    if b.rng.gen_bool(0.5) {
                        let device = p.devices.choose(b.rng).cloned();
                        let item =
                            json!({"sku": "SKU-00001", "quantity": 1, "unit_price_minor": 1000});
                        let steps = [
                            ("screen_viewed", 30, ("screen", json!("product/1"))),
                            ("cart_item_added", 10, ("item", item)),
                        ];
                        for (event, minutes, (field, value)) in steps {
                            b.next_at = Some(at - TimeDelta::minutes(minutes));
                            let m = ids(&[("device_id", device.clone())]);
                            let r = b.base(event, "app", "app", m);
                            let extra = Map::from_iter([(field.to_owned(), value)]);
                            push(&mut b, r, extra, introducing);
                        }
                    }
                    b.next_at = Some(at);
                    let r = b.base("order_placed", "web", "shop", m);
                    (r, b.order())
                }
                83..=88 => {
                    let m = ids(&[("phone", Some(noisy_phone(b.rng, &phone_now)))]);
                    let r = b.base("call_center_contact", "call_center", "call-center", m);
                    (r, Map::from_iter([("topic".into(), json!("delivery"))]))
                }
                89..=95 => {
                    let device = p.devices.choose(b.rng).cloned();
                    let m = ids(&[("device_id", device)]);
                    let r = b.base("ad_clicked", "ads", "ad-platform", m);
                    (
                        r,
                        Map::from_iter([(
                            "campaign".into(),
                            json!(format!("spring-{}", b.rng.gen_range(0..5))),
                        )]),
                    )
                }
                _ => match &p.shared_device {
                    // On the family tablet every touchpoint carries the member's own phone.
                    Some(tablet) => {
                        let m = ids(&[
                            ("device_id", Some(tablet.clone())),
                            ("phone", Some(noisy_phone(b.rng, &p.phone))),
                        ]);
                        let r = b.base("screen_viewed", "app", "app", m);
                        (r, Map::from_iter([("screen".into(), json!("home"))]))
                    }
                    None => {
                        let m = ids(&[("phone", Some(noisy_phone(b.rng, &p.phone)))]);
                        let r = b.base("store_visited", "store", "store-wifi", m);
                        (r, Map::from_iter([("store_id".into(), json!("SH-01"))]))
                    }
                },
            };
            push(&mut b, r, extra, introducing);
        }
    }
    records.sort_by_key(|r| r.occurred_at);
    records
}

/// Pairwise scores of a clustering against the truth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct PairScores {
    /// Of the pairs put in one customer, the share that are one person.
    pub precision: f64,
    /// Of the pairs that are one person, the share put in one customer.
    pub recall: f64,
    /// People in the truth.
    pub people: usize,
    /// Customers found.
    pub customers: usize,
}

fn pairs(n: u64) -> u64 {
    n * n.saturating_sub(1) / 2
}

/// Scores `(person, customer)` assignments of records: pairwise precision and recall.
pub fn score<C: std::hash::Hash + Eq + Copy>(assignments: &[(u32, C)]) -> PairScores {
    let mut by_person: HashMap<u32, u64> = HashMap::new();
    let mut by_customer: HashMap<C, u64> = HashMap::new();
    let mut by_both: HashMap<(u32, C), u64> = HashMap::new();
    for (person, customer) in assignments {
        *by_person.entry(*person).or_default() += 1;
        *by_customer.entry(*customer).or_default() += 1;
        *by_both.entry((*person, *customer)).or_default() += 1;
    }
    let together: u64 = by_both.values().map(|n| pairs(*n)).sum();
    let same_person: u64 = by_person.values().map(|n| pairs(*n)).sum();
    let same_customer: u64 = by_customer.values().map(|n| pairs(*n)).sum();
    let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
    PairScores {
        precision: ratio(together, same_customer),
        recall: ratio(together, same_person),
        people: by_person.len(),
        customers: by_customer.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_scores_match_a_hand_count() {
        // Truth: {a1 a2 a3} {b1 b2}. Found: {a1 a2} {a3 b1 b2}.
        let found = [(1, 'x'), (1, 'x'), (1, 'y'), (2, 'y'), (2, 'y')];
        let s = score(&found);
        // Pairs together in both: (a1,a2), (b1,b2) = 2. Same customer: 1 + 3 = 4. Same person: 3 + 1 = 4.
        assert_eq!((s.precision, s.recall), (0.5, 0.5));
        assert_eq!((s.people, s.customers), (2, 2));
        assert_eq!(score(&[(1, 'x'), (1, 'x')]).precision, 1.0);
    }

    #[test]
    fn the_same_seed_gives_the_same_people_and_noise() {
        let config = DemoConfig {
            people: 50,
            ..DemoConfig::default()
        };
        let a = generate_people(&config, 0, 50);
        let b = generate_people(&config, 0, 50);
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|(x, y)| x.record == y.record));
        assert!(a.windows(2).all(|w| w[0].occurred_at <= w[1].occurred_at));
        let people: std::collections::HashSet<u32> = a.iter().map(|r| r.person).collect();
        assert_eq!(people.len(), 50);
    }
}

/// What `patron demo` did, and how well the customers match the people.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DemoSummary {
    /// Records generated.
    pub records: u64,
    /// Records stored.
    pub accepted: u64,
    /// Records refused (quarantined).
    pub rejected: u64,
    /// Records broken on purpose that were stored anyway (should be 0).
    pub broken_accepted: u64,
    /// Sound records refused (should be 0).
    pub sound_rejected: u64,
    /// Customers merged while loading.
    pub merges: u64,
    /// Pairwise scores of the stored records' customers against the people.
    pub scores: PairScores,
    /// Wall-clock time, in seconds.
    pub seconds: f64,
    /// Records per second, end to end.
    pub records_per_s: f64,
}

/// Generates the data set people by people and loads it through `ingestor`, `batch` records per
/// transaction, then scores the unified customers against the truth.
pub async fn run_demo(
    ingestor: &crate::ingest::Ingestor,
    config: &DemoConfig,
    batch: usize,
) -> Result<DemoSummary, crate::ingest::IngestError> {
    use crate::ingest::RecordOutcome;

    const PEOPLE_PER_CHUNK: usize = 2_000;
    let started = std::time::Instant::now();
    let expected = (config.people as f64 * (config.touchpoints_per_person + 3.0)) as u64;
    let bar = indicatif::ProgressBar::new(expected);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "loading demo [{bar:40}] {human_pos}/~{human_len} records, {per_sec}, eta {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let mut summary = DemoSummary::default();
    let mut truth: Vec<(u32, patron_domain::customer::CustomerId)> = Vec::new();
    // The next chunk is generated and prepared while the previous one commits.
    let mut pipeline = crate::ingest::CommitPipeline::new(ingestor.clone());
    let mut settle = |done: Option<(Vec<(u32, bool)>, crate::ingest::IngestReport)>| {
        let Some((people, report)) = done else { return };
        summary.merges += report.merges as u64;
        for ((person, broken), outcome) in people.iter().zip(&report.records) {
            summary.records += 1;
            match outcome {
                RecordOutcome::Accepted { customer, .. } => {
                    summary.accepted += 1;
                    summary.broken_accepted += u64::from(*broken);
                    truth.push((*person, *customer));
                }
                RecordOutcome::Rejected { .. } => {
                    summary.rejected += 1;
                    summary.sound_rejected += u64::from(!*broken);
                }
                RecordOutcome::Duplicate { .. } => {}
            }
        }
        bar.inc(people.len() as u64);
    };
    let mut first = 0;
    while first < config.people {
        let count = PEOPLE_PER_CHUNK.min(config.people - first);
        let records = generate_people(config, first, count);
        first += count;
        for chunk in records.chunks(batch.max(1)) {
            let people: Vec<(u32, bool)> = chunk.iter().map(|r| (r.person, r.broken)).collect();
            let incoming = chunk
                .iter()
                .map(|r| crate::ingest::Incoming::json(r.record.to_string()))
                .collect();
            let prepared = ingestor.prepare(incoming);
            settle(
                pipeline
                    .submit(people, prepared)
                    .await
                    .map_err(|(_, e)| e)?,
            );
        }
    }
    settle(pipeline.finish().await.map_err(|(_, e)| e)?);
    bar.finish_and_clear();
    let aliases = ingestor.store().aliases().await?;
    for (_, customer) in &mut truth {
        if let Some(survivor) = aliases.get(customer) {
            *customer = *survivor;
        }
    }
    summary.scores = score(&truth);
    summary.seconds = started.elapsed().as_secs_f64();
    summary.records_per_s = summary.records as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}
