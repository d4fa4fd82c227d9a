//! The identity index as a fold of the log: who holds each identifier, which customers resolve
//! to which, which values are blocked. Every change the store makes to its index follows from
//! an event (a touchpoint's links, a merge, a correction's facts, an erasure, a block), so
//! folding the events in log order gives the index back; `patron verify` compares the two and
//! `patron rebuild identity` writes the fold.

use std::collections::{BTreeMap, BTreeSet};

use crate::identifier::Identifier;

use super::{CustomerId, IndexChange};

/// How many merges one resolution follows at most (merges never make a cycle; the cap keeps a
/// corrupt log from hanging the fold).
const MAX_CHAIN: usize = 10_000;

/// The identity index folded from the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexFold {
    /// Each pseudonym with the live customer holding it.
    pub holders: BTreeMap<Identifier, CustomerId>,
    /// Each customer closed by a merge with the live customer it resolves to.
    pub aliases: BTreeMap<CustomerId, CustomerId>,
    /// The pseudonyms of the values operators blocked.
    pub blocked: BTreeSet<Identifier>,
}

impl IndexFold {
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
            self.holders.insert(identifier, holder);
        }
    }

    /// Applies one change derived from a fact ([`super::CustomerFact::index_changes`]).
    pub fn apply(&mut self, change: IndexChange) {
        match change {
            IndexChange::Merge { absorbed, survivor } => {
                for holder in self.holders.values_mut() {
                    if *holder == absorbed {
                        *holder = survivor;
                    }
                }
                for target in self.aliases.values_mut() {
                    if *target == absorbed {
                        *target = survivor;
                    }
                }
                self.aliases.insert(absorbed, survivor);
            }
            IndexChange::Restore { customer, members } => {
                self.aliases.remove(&customer);
                for member in members {
                    if self.aliases.contains_key(&member) {
                        self.aliases.insert(member, customer);
                    }
                }
            }
            IndexChange::Hold { identifier, holder } => match holder {
                Some(holder) => {
                    self.holders.insert(identifier, holder);
                }
                None => {
                    self.holders.remove(&identifier);
                }
            },
        }
    }

    /// The live customer `live` was erased: it holds nothing any more.
    pub fn erase(&mut self, live: CustomerId) {
        self.holders.retain(|_, holder| *holder != live);
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
        assert_eq!(index.aliases, [(id(1), id(3)), (id(2), id(3))].into());
        assert!(index.holders.values().all(|h| *h == id(3)));
        // A touchpoint stored on 1's stream after the merge (same batch) links to 3.
        index.link(id(1), [phone("d")]);
        assert_eq!(index.holders[&phone("d")], id(3));
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
        assert_eq!(index.holders[&phone("b")], id(2));
        index.erase(id(3));
        assert_eq!(index.holders.keys().collect::<Vec<_>>(), vec![&phone("b")]);
        index.apply(IndexChange::Hold {
            identifier: phone("b"),
            holder: None,
        });
        index.block(phone("b"));
        assert!(index.holders.is_empty() && index.blocked.contains(&phone("b")));
    }
}
