//! The resolution of one touchpoint's identifiers to a customer, and the in-memory identity
//! graph it is decided against.
//!
//! The rules, in order:
//! 1. Blocked values are set aside: they link nothing and merge nothing.
//! 2. Every customer holding one of the touchpoint's core identifiers is the same person: they
//!    merge, the oldest surviving.
//! 3. A customer reached only through an auxiliary identifier joins them unless it holds a core
//!    identifier of a kind the others also hold (a family tablet shared by two phones): then its
//!    auxiliary identifiers stay where they are and are recorded as held by another customer.
//! 4. If no customer is left, the touchpoint starts a new one.
//! 5. Identifiers nobody holds are linked to the customer, up to each kind's limit; the rest are
//!    recorded as over the limit.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap as HashMap;

use serde::{Deserialize, Serialize};

use super::rules::IdentityRules;
use crate::customer::CustomerId;
use crate::identifier::{Identifier, IdentifierKind};

/// What the resolver needs to know of the current identity graph.
pub trait IdentityView {
    /// The live customer holding an identifier (a merged customer's identifiers are held by its
    /// survivor).
    fn owner(&self, identifier: &Identifier) -> Option<CustomerId>;
    /// The identifiers a live customer holds.
    fn identifiers(&self, customer: CustomerId) -> Vec<&Identifier>;
    /// Whether an operator blocked this identifier (beyond the rules' blocked values).
    fn is_blocked(&self, _identifier: &Identifier) -> bool {
        false
    }
}

/// Why an identifier of a touchpoint was not linked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum SkipReason {
    /// The value is on the rules' blocked list.
    Blocked,
    /// The customer already holds the most identifiers of this kind the rules allow.
    LimitReached {
        /// The kind's limit.
        limit: u32,
    },
    /// The identifier belongs to another customer who could not be merged (rule 3).
    HeldByOther {
        /// The customer holding it.
        customer: CustomerId,
    },
}

/// An identifier that was not linked, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The identifier.
    pub identifier: Identifier,
    /// Why.
    #[serde(flatten)]
    pub reason: SkipReason,
}

/// A customer absorbed into the resolved one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merge {
    /// The customer closed by the merge; its id resolves to the survivor from now on.
    pub absorbed: CustomerId,
    /// The touchpoint's identifiers that the absorbed customer held: why they are one person.
    pub evidence: Vec<Identifier>,
}

/// The decision for one touchpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// The customer the touchpoint belongs to (the survivor of any merge).
    pub customer: CustomerId,
    /// Whether the touchpoint starts this customer.
    pub created: bool,
    /// Customers merged into `customer`, oldest first.
    pub merges: Vec<Merge>,
    /// Identifiers linked to `customer` now.
    pub links: Vec<Identifier>,
    /// Identifiers not linked, with the reason.
    pub skipped: Vec<Skipped>,
    /// The version of the rules that decided.
    pub rules_version: u32,
}

/// Applies [`IdentityRules`] to touchpoints.
#[derive(Clone, Debug)]
pub struct Resolver<'r> {
    rules: &'r IdentityRules,
}

type CoreValues = BTreeMap<IdentifierKind, BTreeSet<String>>;

impl<'r> Resolver<'r> {
    /// A resolver for the given rules.
    pub fn new(rules: &'r IdentityRules) -> Self {
        Self { rules }
    }

    fn add_core(&self, core: &mut CoreValues, identifier: &Identifier) {
        if self.rules.is_core(&identifier.kind) {
            core.entry(identifier.kind.clone())
                .or_default()
                .insert(identifier.value.clone());
        }
    }

    /// Whether a customer holding `theirs` holds a core identifier of a kind that `ours` holds
    /// too (with other values, or they would already be one customer).
    fn conflicts(&self, ours: &CoreValues, theirs: &[&Identifier]) -> bool {
        theirs.iter().any(|id| {
            self.rules.is_core(&id.kind)
                && ours
                    .get(&id.kind)
                    .is_some_and(|values| !values.is_empty() && !values.contains(&id.value))
        })
    }

    /// Decides where a touchpoint with these (normalized) identifiers belongs. `new_customer`
    /// makes the id of a customer the touchpoint starts, if it starts one.
    pub fn resolve(
        &self,
        view: &impl IdentityView,
        identifiers: &[Identifier],
        new_customer: impl FnOnce() -> CustomerId,
    ) -> Resolution {
        let mut skipped = Vec::new();
        let mut usable: Vec<&Identifier> = Vec::new();
        for id in identifiers {
            if usable.contains(&id) || skipped.iter().any(|s: &Skipped| &s.identifier == id) {
                continue;
            }
            if self.rules.is_blocked(id) || view.is_blocked(id) {
                skipped.push(Skipped {
                    identifier: id.clone(),
                    reason: SkipReason::Blocked,
                });
            } else {
                usable.push(id);
            }
        }
        let owners: Vec<Option<CustomerId>> = usable.iter().map(|id| view.owner(id)).collect();

        // Rule 2: the owners of core identifiers are one person.
        let mut group: BTreeSet<CustomerId> = BTreeSet::new();
        let mut core = CoreValues::new();
        for (id, owner) in usable.iter().zip(&owners) {
            if self.rules.is_core(&id.kind) {
                self.add_core(&mut core, id);
                if let Some(owner) = owner {
                    group.insert(*owner);
                }
            }
        }
        let mut held: HashMap<CustomerId, Vec<&Identifier>> = HashMap::default();
        for customer in &group {
            let ids = view.identifiers(*customer);
            for id in &ids {
                self.add_core(&mut core, id);
            }
            held.insert(*customer, ids);
        }

        // Rule 3: owners reached through auxiliary identifiers join unless they conflict.
        let aux_owners: BTreeSet<CustomerId> = usable
            .iter()
            .zip(&owners)
            .filter(|(id, _)| !self.rules.is_core(&id.kind))
            .filter_map(|(_, owner)| *owner)
            .filter(|owner| !group.contains(owner))
            .collect();
        let mut refused: BTreeSet<CustomerId> = BTreeSet::new();
        for customer in aux_owners {
            let ids = view.identifiers(customer);
            if self.conflicts(&core, &ids) {
                refused.insert(customer);
            } else {
                for id in &ids {
                    self.add_core(&mut core, id);
                }
                group.insert(customer);
                held.insert(customer, ids);
            }
        }

        // Rule 4: the oldest customer of the group survives; none left means a new customer.
        let (customer, created) = match group.first() {
            Some(oldest) => (*oldest, false),
            None => (new_customer(), true),
        };
        let merges: Vec<Merge> = group
            .iter()
            .filter(|c| **c != customer)
            .map(|absorbed| Merge {
                absorbed: *absorbed,
                evidence: usable
                    .iter()
                    .zip(&owners)
                    .filter(|(_, owner)| *owner == &Some(*absorbed))
                    .map(|(id, _)| (*id).clone())
                    .collect(),
            })
            .collect();

        // Rule 5: link what nobody holds, within each kind's limit.
        let mut counts: HashMap<&IdentifierKind, u32> = HashMap::default();
        for id in held.values().flatten() {
            *counts.entry(&id.kind).or_default() += 1;
        }
        let mut links = Vec::new();
        for (id, owner) in usable.iter().zip(&owners) {
            match owner {
                Some(owner) if refused.contains(owner) => skipped.push(Skipped {
                    identifier: (*id).clone(),
                    reason: SkipReason::HeldByOther { customer: *owner },
                }),
                Some(_) => {}
                None => {
                    let limit = self
                        .rules
                        .rule(&id.kind)
                        .map_or(u32::MAX, |r| r.max_per_customer);
                    let count = counts.entry(&id.kind).or_default();
                    if *count >= limit {
                        skipped.push(Skipped {
                            identifier: (*id).clone(),
                            reason: SkipReason::LimitReached { limit },
                        });
                    } else {
                        *count += 1;
                        links.push((*id).clone());
                    }
                }
            }
        }

        Resolution {
            customer,
            created,
            merges,
            links,
            skipped,
            rules_version: self.rules.version(),
        }
    }
}

/// The longest chain of merges followed when resolving a customer.
const MAX_MERGE_CHAIN: usize = 1_000;

/// An identity graph in memory: who holds which identifier, and which customers were merged
/// into which. The batch resolver loads the part of the stored graph a batch touches into one,
/// and tests use it as the whole graph.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IdentityGraph {
    owners: HashMap<Identifier, CustomerId>,
    held: HashMap<CustomerId, BTreeSet<Identifier>>,
    merged_into: HashMap<CustomerId, CustomerId>,
    blocked: rustc_hash::FxHashSet<Identifier>,
}

impl IdentityGraph {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `customer` holds `identifier` (used when loading a stored graph).
    pub fn insert(&mut self, identifier: Identifier, customer: CustomerId) {
        self.held
            .entry(customer)
            .or_default()
            .insert(identifier.clone());
        self.owners.insert(identifier, customer);
    }

    /// Records that an operator blocked `identifier` (used when loading a stored graph).
    pub fn block(&mut self, identifier: Identifier) {
        self.blocked.insert(identifier);
    }

    /// Records that `absorbed` was merged into `survivor` (used when loading a stored graph).
    pub fn insert_alias(&mut self, absorbed: CustomerId, survivor: CustomerId) {
        self.merged_into.insert(absorbed, survivor);
    }

    /// Applies a resolution: merges, then links.
    pub fn apply(&mut self, resolution: &Resolution) {
        let survivor = resolution.customer;
        for merge in &resolution.merges {
            let moved = self.held.remove(&merge.absorbed).unwrap_or_default();
            for id in &moved {
                self.owners.insert(id.clone(), survivor);
            }
            self.held.entry(survivor).or_default().extend(moved);
            self.merged_into.insert(merge.absorbed, survivor);
        }
        for id in &resolution.links {
            self.insert(id.clone(), survivor);
        }
    }

    /// The live customer an id resolves to: itself, or the survivor it was merged into
    /// (following merges of merges).
    pub fn resolve_customer(&self, customer: CustomerId) -> CustomerId {
        let mut current = customer;
        // Merges never make a cycle (an absorbed customer is never a survivor again); the cap
        // keeps a corrupted graph from hanging the caller.
        for _ in 0..MAX_MERGE_CHAIN {
            match self.merged_into.get(&current) {
                Some(next) => current = *next,
                None => break,
            }
        }
        current
    }

    /// Live customers with at least one identifier.
    pub fn customers(&self) -> impl Iterator<Item = CustomerId> + '_ {
        self.held.keys().copied()
    }
}

impl IdentityView for IdentityGraph {
    fn owner(&self, identifier: &Identifier) -> Option<CustomerId> {
        self.owners.get(identifier).copied()
    }

    fn identifiers(&self, customer: CustomerId) -> Vec<&Identifier> {
        self.held
            .get(&customer)
            .map(|ids| ids.iter().collect())
            .unwrap_or_default()
    }

    fn is_blocked(&self, identifier: &Identifier) -> bool {
        self.blocked.contains(identifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct World {
        rules: IdentityRules,
        graph: IdentityGraph,
    }

    impl World {
        fn new() -> Self {
            Self {
                rules: IdentityRules::default(),
                graph: IdentityGraph::new(),
            }
        }

        fn id(&self, kind: &str, raw: &str) -> Identifier {
            self.rules.normalize(kind, raw).unwrap()
        }

        /// Resolves and applies a touchpoint with `(kind, raw value)` identifiers.
        fn touch(&mut self, ids: &[(&str, &str)]) -> Resolution {
            let ids: Vec<Identifier> = ids.iter().map(|(k, v)| self.id(k, v)).collect();
            let resolution = Resolver::new(&self.rules).resolve(&self.graph, &ids, CustomerId::new);
            self.graph.apply(&resolution);
            resolution
        }
    }

    #[test]
    fn the_same_phone_in_pos_and_app_is_one_customer() {
        let mut w = World::new();
        let pos = w.touch(&[("phone", "139 1234 0001"), ("member_card", "MC-1")]);
        assert!(pos.created);
        let app = w.touch(&[("phone", "+86 13912340001"), ("device_id", "IDFA-1")]);
        assert_eq!(app.customer, pos.customer);
        assert!(!app.created && app.merges.is_empty());
        assert_eq!(app.links, vec![w.id("device_id", "idfa-1")]);
        assert_eq!(w.graph.customers().count(), 1);
    }

    #[test]
    fn a_family_tablet_shared_by_two_phones_is_two_customers() {
        let mut w = World::new();
        let mum = w.touch(&[("phone", "13912340001"), ("device_id", "tablet")]);
        let son = w.touch(&[("phone", "13912340002"), ("device_id", "tablet")]);
        assert_ne!(son.customer, mum.customer);
        assert!(son.created && son.merges.is_empty());
        assert_eq!(
            son.skipped,
            vec![Skipped {
                identifier: w.id("device_id", "tablet"),
                reason: SkipReason::HeldByOther {
                    customer: mum.customer
                },
            }]
        );
        // The tablet alone still leads to its first holder.
        let browse = w.touch(&[("device_id", "tablet")]);
        assert_eq!(browse.customer, mum.customer);
    }

    #[test]
    fn a_blocked_placeholder_phone_merges_nothing() {
        let mut w = World::new();
        let a = w.touch(&[("phone", "13800138000"), ("email", "a@example.cn")]);
        let b = w.touch(&[("phone", "138-0013-8000"), ("email", "b@example.cn")]);
        assert_ne!(a.customer, b.customer);
        assert_eq!(b.skipped[0].reason, SkipReason::Blocked);
        // A touchpoint with only the placeholder starts its own customer, linked to nothing.
        let c = w.touch(&[("phone", "13800138000")]);
        assert!(c.created && c.links.is_empty());
        assert_eq!(w.graph.owner(&w.id("phone", "13800138000")), None);
    }

    #[test]
    fn chain_merges_end_with_the_oldest_customer_and_every_alias_resolving_to_it() {
        let mut w = World::new();
        let a = w.touch(&[("phone", "13912340001")]).customer;
        let b = w.touch(&[("email", "b@example.cn")]).customer;
        let c = w.touch(&[("login_id", "cee")]).customer;
        let ab = w.touch(&[("email", "b@example.cn"), ("phone", "13912340001")]);
        assert_eq!(ab.customer, a);
        assert_eq!(
            ab.merges,
            vec![Merge {
                absorbed: b,
                evidence: vec![w.id("email", "b@example.cn")]
            }]
        );
        let bc = w.touch(&[("login_id", "cee"), ("email", "b@example.cn")]);
        assert_eq!(bc.customer, a);
        assert_eq!(
            bc.merges.iter().map(|m| m.absorbed).collect::<Vec<_>>(),
            vec![c]
        );
        for id in [a, b, c] {
            assert_eq!(w.graph.resolve_customer(id), a);
        }
        assert_eq!(w.graph.customers().collect::<Vec<_>>(), vec![a]);
        assert_eq!(w.graph.identifiers(a).len(), 3);
    }

    #[test]
    fn identifiers_beyond_a_kinds_limit_are_kept_as_evidence_only() {
        let mut w = World::new();
        let first = w.touch(&[("phone", "13912340001")]).customer;
        for n in 1..=5 {
            let email = format!("me{n}@example.cn");
            let r = w.touch(&[("phone", "13912340001"), ("email", &email)]);
            assert_eq!(r.links.len(), 1, "email {n} is linked");
        }
        let sixth = w.touch(&[("phone", "13912340001"), ("email", "me6@example.cn")]);
        assert_eq!(sixth.customer, first);
        assert!(sixth.links.is_empty());
        assert_eq!(
            sixth.skipped[0].reason,
            SkipReason::LimitReached { limit: 5 }
        );
        assert_eq!(w.graph.owner(&w.id("email", "me6@example.cn")), None);
    }

    #[test]
    fn an_anonymous_device_joins_the_person_who_logs_in_on_it() {
        let mut w = World::new();
        let anonymous = w.touch(&[("device_id", "phone-of-li")]).customer;
        let known = w.touch(&[("phone", "13912340001")]).customer;
        let login = w.touch(&[("device_id", "phone-of-li"), ("phone", "13912340001")]);
        // Both are merged; the older (the anonymous one) survives and the phone resolves to it.
        assert_eq!(login.customer, anonymous);
        assert_eq!(login.merges.len(), 1);
        assert_eq!(login.merges[0].absorbed, known);
        assert_eq!(w.graph.resolve_customer(known), anonymous);
    }

    #[test]
    fn two_core_identifiers_of_different_customers_merge_them() {
        let mut w = World::new();
        let a = w.touch(&[("phone", "13912340001")]).customer;
        let b = w.touch(&[("phone", "13912340002")]).customer;
        let both = w.touch(&[("phone", "13912340001"), ("phone", "13912340002")]);
        assert_eq!(both.customer, a);
        assert_eq!(both.merges[0].absorbed, b);
        assert_eq!(both.rules_version, 1);
    }
}
