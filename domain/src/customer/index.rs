//! The identity index as a fold of the log: who holds each identifier, which customers resolve
//! to which, which values are blocked. Every change the store makes to its index follows from
//! an event (a touchpoint's links, a merge, a correction's facts, an erasure, a block), so
//! folding the events in log order gives the index back; `patron verify` compares the two and
//! `patron rebuild identity` writes the fold.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::identifier::Identifier;

use super::{CustomerId, IndexChange};

/// How many merges one resolution follows at most (merges never make a cycle; the cap keeps a
/// corrupt log from hanging the fold).
const MAX_CHAIN: usize = 10_000;

/// The identity index folded from the log. Each holder also knows what it holds, and each live
/// customer who was merged into it, so that a merge moves only what it moves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexFold {
    holders: BTreeMap<Identifier, CustomerId>,
    aliases: BTreeMap<CustomerId, CustomerId>,
    blocked: BTreeSet<Identifier>,
    /// What each customer holds: `holders` read the other way.
    held: HashMap<CustomerId, BTreeSet<Identifier>>,
    /// The customers resolving to each customer: `aliases` read the other way.
    members: HashMap<CustomerId, BTreeSet<CustomerId>>,
}

impl IndexFold {
    /// Each pseudonym with the live customer holding it.
    pub fn holders(&self) -> &BTreeMap<Identifier, CustomerId> {
        &self.holders
    }

    /// Each customer closed by a merge with the live customer it resolves to.
    pub fn aliases(&self) -> &BTreeMap<CustomerId, CustomerId> {
        &self.aliases
    }

    /// The pseudonyms of the values operators blocked.
    pub fn blocked(&self) -> &BTreeSet<Identifier> {
        &self.blocked
    }

    /// The live customer `customer` resolves to.
    pub fn resolve(&self, customer: CustomerId) -> CustomerId {
        let mut current = customer;
        for _ in 0..MAX_CHAIN {
            match self.aliases.get(&current) {
                Some(next) if *next != current => current = *next,
                _ => break,
            }
        }
        current
    }

    /// A touchpoint on `stream` linked `identifiers` to its customer. A touchpoint is appended
    /// to a live customer's stream; within one batch a merge may be stored before it, so the
    /// links go to the customer the stream resolves to.
    pub fn link(&mut self, stream: CustomerId, identifiers: impl IntoIterator<Item = Identifier>) {
        let holder = self.resolve(stream);
        for identifier in identifiers {
            self.hold(identifier, Some(holder));
        }
    }

    /// `identifier` is held by `holder` (or nobody) from now on.
    fn hold(&mut self, identifier: Identifier, holder: Option<CustomerId>) {
        let before = match holder {
            Some(holder) => {
                self.held
                    .entry(holder)
                    .or_default()
                    .insert(identifier.clone());
                self.holders.insert(identifier.clone(), holder)
            }
            None => self.holders.remove(&identifier),
        };
        if let Some(before) = before.filter(|b| Some(*b) != holder) {
            if let Some(set) = self.held.get_mut(&before) {
                set.remove(&identifier);
            }
        }
    }

    /// `member` resolves to `target` from now on (or to itself).
    fn alias(&mut self, member: CustomerId, target: Option<CustomerId>) {
        let before = match target {
            Some(target) => {
                self.members.entry(target).or_default().insert(member);
                self.aliases.insert(member, target)
            }
            None => self.aliases.remove(&member),
        };
        if let Some(before) = before.filter(|b| Some(*b) != target) {
            if let Some(set) = self.members.get_mut(&before) {
                set.remove(&member);
            }
        }
    }

    /// Applies one change derived from a fact ([`super::CustomerFact::index_changes`]).
    pub fn apply(&mut self, change: IndexChange) {
        match change {
            IndexChange::Merge { absorbed, survivor } => {
                // What the absorbed customer holds goes to the survivor, and those that
                // resolved to it resolve to the survivor.
                for identifier in self.held.remove(&absorbed).unwrap_or_default() {
                    self.hold(identifier, Some(survivor));
                }
                for member in self.members.remove(&absorbed).unwrap_or_default() {
                    self.alias(member, Some(survivor));
                }
                self.alias(absorbed, Some(survivor));
            }
            IndexChange::Restore { customer, members } => {
                self.alias(customer, None);
                for member in members {
                    if self.aliases.contains_key(&member) {
                        self.alias(member, Some(customer));
                    }
                }
            }
            IndexChange::Hold { identifier, holder } => self.hold(identifier, holder),
        }
    }

    /// The live customer `live` was erased: it holds nothing any more.
    pub fn erase(&mut self, live: CustomerId) {
        for identifier in self.held.remove(&live).unwrap_or_default() {
            self.holders.remove(&identifier);
        }
    }

    /// A value was blocked.
    pub fn block(&mut self, identifier: Identifier) {
        self.blocked.insert(identifier);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identifier::IdentifierKind;
    use uuid::Uuid;

    fn id(n: u128) -> CustomerId {
        CustomerId::from_uuid(Uuid::from_u128(n))
    }

    fn phone(value: &str) -> Identifier {
        Identifier {
            kind: IdentifierKind::new("phone").expect("a kind"),
            value: value.to_owned(),
        }
    }

    #[test]
    fn merges_repoint_holders_and_aliases_and_restores_take_members_back() {
        let mut index = IndexFold::default();
        index.link(id(1), [phone("a")]);
        index.link(id(2), [phone("b")]);
        index.link(id(3), [phone("c")]);
        // 1 into 2, then 2 into 3: both resolve to 3 and every holder is 3.
        index.apply(IndexChange::Merge {
            absorbed: id(1),
            survivor: id(2),
        });
        index.apply(IndexChange::Merge {
            absorbed: id(2),
            survivor: id(3),
        });
        assert_eq!(index.aliases(), &[(id(1), id(3)), (id(2), id(3))].into());
        assert!(index.holders().values().all(|h| *h == id(3)));
        // A touchpoint stored on 1's stream after the merge (same batch) links to 3.
        index.link(id(1), [phone("d")]);
        assert_eq!(index.holders()[&phone("d")], id(3));
        // Undo the merge of 2, which had 1 merged into it: 2 is live, 1 resolves to 2.
        index.apply(IndexChange::Restore {
            customer: id(2),
            members: vec![id(1)],
        });
        index.apply(IndexChange::Hold {
            identifier: phone("b"),
            holder: Some(id(2)),
        });
        assert_eq!(index.resolve(id(1)), id(2));
        assert_eq!(index.resolve(id(2)), id(2));
        assert_eq!(index.holders()[&phone("b")], id(2));
        index.erase(id(3));
        assert_eq!(
            index.holders().keys().collect::<Vec<_>>(),
            vec![&phone("b")]
        );
        index.apply(IndexChange::Hold {
            identifier: phone("b"),
            holder: None,
        });
        index.block(phone("b"));
        assert!(index.holders().is_empty() && index.blocked().contains(&phone("b")));
    }
}
