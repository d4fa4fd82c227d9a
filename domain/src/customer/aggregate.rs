//! The customer aggregate: identity corrections decided by pure code.
//!
//! A [`Customer`] is the state a live customer's decisions need: the identifiers it holds (as
//! pseudonyms), the touchpoints it owns with the identifiers each carried and linked, and its
//! [`Holdings`] (streams merged in, touchpoints moved in and out). A [`CustomerCommand`] is
//! decided over that state into [`CustomerFact`]s: the events to append, on this customer's
//! stream and, wrapped in [`CustomerFact::Elsewhere`], on every other stream the decision
//! touches (the absorbed side of a merge, the part of a split, the holder an identifier is taken
//! from). It follows cqrs-es's [`Aggregate`]; Patron's store commits all the facts of one
//! decision and the identity index changes they imply ([`CustomerFact::index_changes`]) in one
//! transaction (`src/correction/`).

use std::collections::BTreeSet;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::event_log::{EventId, Position};
use crate::events::{
    CustomerErased, CustomerEvent, CustomerMerged, CustomerMergedInto, IdentifierLinked,
    IdentifierUnlinked, Separation, CUSTOMER_ERASED, CUSTOMER_MERGED, CUSTOMER_MERGED_INTO,
    CUSTOMER_RESTORED, CUSTOMER_SPLIT, CUSTOMER_SPLIT_OFF, IDENTIFIER_LINKED, IDENTIFIER_UNLINKED,
    MERGE_UNDONE,
};
use crate::identifier::{Identifier, IdentifierKind};

use super::division::divide;
use super::{CustomerId, Holdings};

/// A touchpoint a customer owns, with the pseudonyms it carried and those it linked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnedTouchpoint {
    /// Its position in the log.
    pub position: Position,
    /// The customer whose stream holds it.
    pub stream: CustomerId,
    /// The pseudonyms of every identifier it carried.
    pub carried: BTreeSet<Identifier>,
    /// The pseudonyms of those it linked to its customer.
    pub linked: BTreeSet<Identifier>,
}

/// One change to the identifiers a merged customer's streams gave it or took from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    /// The position of the event.
    pub position: Position,
    /// Whether the event gave the identifiers (a touchpoint's links, a link by hand, a
    /// restoration or a split) or took them (an unlink, an undone merge, a split off it).
    pub given: bool,
    /// The pseudonyms.
    pub identifiers: Vec<Identifier>,
}

/// The customer an undone merge makes live again, as its own streams record it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartRecord {
    /// The customer closed by the merge.
    pub absorbed: CustomerId,
    /// The streams it takes back: its own first, then those of the customers merged into it
    /// before that still live on in the giver.
    pub streams: Vec<CustomerId>,
    /// Its holdings when it was merged.
    pub holdings: Holdings,
    /// The positions of every touchpoint on `streams`.
    pub on_streams: BTreeSet<Position>,
    /// What `streams` gave it and took from it, in log order.
    pub claims: Vec<Claim>,
    /// The position of the merge being undone: touchpoints the giver owned before it stay
    /// with the giver, whatever identifiers they carried.
    pub merged_at: Position,
}

/// What may be asked of a customer. Identifiers are pseudonyms; `holder` is who the identity
/// index says holds one, as read when the command was made (the commit checks it again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CustomerCommand {
    /// Merge `absorbed` into this customer, `survivor`.
    Merge {
        /// This customer.
        survivor: CustomerId,
        /// The customer closed by the merge.
        absorbed: CustomerId,
        /// The id of the event that causes the merge (the survivor's own event).
        cause: EventId,
        /// The identity rules' version.
        rules_version: u32,
    },
    /// Undo the merge that brought `part.absorbed` into this customer, `giver`.
    UndoMerge {
        /// This customer.
        giver: CustomerId,
        /// The customer made live again.
        part: PartRecord,
        /// The identity rules' core kinds: a touchpoint that carried a core identifier that
        /// stays, stays.
        core: BTreeSet<IdentifierKind>,
    },
    /// Split `identifiers`, and the touchpoints that came through them, off this customer into
    /// the new customer `part`.
    Split {
        /// This customer.
        customer: CustomerId,
        /// The new customer.
        part: CustomerId,
        /// The identifiers to move, each with its holder.
        identifiers: Vec<(Identifier, Option<CustomerId>)>,
        /// The identity rules' core kinds.
        core: BTreeSet<IdentifierKind>,
    },
    /// Split exactly the touchpoints at `positions` (those this customer owns) and the
    /// `identifiers` it holds off this customer into the new customer `part`.
    SplitExactly {
        /// This customer.
        customer: CustomerId,
        /// The new customer.
        part: CustomerId,
        /// The touchpoints to move.
        positions: BTreeSet<Position>,
        /// The identifiers to move, each with its holder.
        identifiers: Vec<(Identifier, Option<CustomerId>)>,
    },
    /// Link `identifier` to this customer, taking it from its holder.
    Link {
        /// This customer.
        customer: CustomerId,
        /// The identifier.
        identifier: Identifier,
        /// Who holds it.
        holder: Option<CustomerId>,
        /// Whether its value is blocked (then it links nobody).
        blocked: bool,
    },
    /// Unlink `identifier` from this customer; `blocked` when it is unlinked because it was
    /// just blocked.
    Unlink {
        /// This customer.
        customer: CustomerId,
        /// The identifier.
        identifier: Identifier,
        /// Who holds it.
        holder: Option<CustomerId>,
        /// Whether it is unlinked because it was blocked.
        blocked: bool,
    },
}

/// Why a customer refused a command. The messages are the ones operators read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No events make this customer.
    #[error("no customer {0}")]
    Unknown(CustomerId),
    /// The customer was erased.
    #[error("customer {0} was erased")]
    Erased(CustomerId),
    /// An identifier given is held by another customer.
    #[error("the {kind} identifier given is held by customer {holder}, not by {customer}")]
    HeldByOther {
        /// Its kind.
        kind: String,
        /// Who holds it.
        holder: CustomerId,
        /// This customer.
        customer: CustomerId,
    },
    /// An identifier given is held by nobody.
    #[error("the {kind} identifier given is held by nobody, not by {customer}")]
    NotHeld {
        /// Its kind.
        kind: String,
        /// This customer.
        customer: CustomerId,
    },
    /// The identifier's value is blocked.
    #[error("the {kind} identifier given is blocked: it links no customer")]
    Blocked {
        /// Its kind.
        kind: String,
    },
}

impl Refusal {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unknown(_) => "UNKNOWN_CUSTOMER",
            Self::Erased(_) => "CUSTOMER_ERASED",
            Self::HeldByOther { .. } => "IDENTIFIER_HELD_BY_OTHER",
            Self::NotHeld { .. } => "IDENTIFIER_NOT_HELD",
            Self::Blocked { .. } => "IDENTIFIER_BLOCKED",
        }
    }
}

/// The customer aggregate's events: a customer's identity events, with identifiers as
/// pseudonyms and touchpoints by position. Every variant but [`CustomerFact::Touchpoint`] is
/// stored as the [`crate::events::CustomerEvent`] of the same name, under the same type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CustomerFact {
    /// A touchpoint this customer owns (folded from its stored touchpoint; never decided here).
    Touchpoint(OwnedTouchpoint),
    /// Another customer was merged into this one.
    Merged(CustomerMerged),
    /// This customer was merged into another.
    MergedInto(CustomerMergedInto),
    /// The customer was erased.
    Erased(CustomerErased),
    /// A merge into this customer was undone.
    MergeUndone(Separation),
    /// This customer was restored by an undone merge.
    Restored(Separation),
    /// A part of this customer was split off.
    Split(Separation),
    /// This customer was made by a split.
    SplitOff(Separation),
    /// An identifier was linked to this customer by hand.
    Linked(IdentifierLinked),
    /// An identifier this customer held was unlinked, moved or blocked.
    Unlinked(IdentifierUnlinked),
    /// A fact a decision of this customer appends on another customer's stream.
    Elsewhere {
        /// The other customer.
        customer: CustomerId,
        /// What is appended there.
        fact: Box<CustomerFact>,
    },
}

impl CustomerFact {
    /// The fact of a stored customer event, for the events the aggregate decides (touchpoints
    /// and the blocklist's events are not).
    pub fn of_event(event: CustomerEvent) -> Option<Self> {
        Some(match event {
            CustomerEvent::Merged(e) => Self::Merged(e),
            CustomerEvent::MergedInto(e) => Self::MergedInto(e),
            CustomerEvent::Erased(e) => Self::Erased(e),
            CustomerEvent::MergeUndone(e) => Self::MergeUndone(e),
            CustomerEvent::Restored(e) => Self::Restored(e),
            CustomerEvent::Split(e) => Self::Split(e),
            CustomerEvent::SplitOff(e) => Self::SplitOff(e),
            CustomerEvent::IdentifierLinked(e) => Self::Linked(e),
            CustomerEvent::IdentifierUnlinked(e) => Self::Unlinked(e),
            CustomerEvent::Touchpoint { .. } | CustomerEvent::IdentifierBlocked(_) => return None,
        })
    }

    /// `fact` for `customer`'s stream.
    fn elsewhere(customer: CustomerId, fact: CustomerFact) -> Self {
        Self::Elsewhere {
            customer,
            fact: Box::new(fact),
        }
    }

    /// The identity index changes this fact makes, appended on `customer`'s stream: who holds
    /// which identifier, who is merged into whom, who is live again. Derived from the facts
    /// alone, so that replaying the log gives the same index.
    pub fn index_changes(&self, customer: CustomerId) -> Vec<IndexChange> {
        fn hold(identifiers: &[Identifier], holder: CustomerId) -> Vec<IndexChange> {
            identifiers
                .iter()
                .map(|i| IndexChange::Hold {
                    identifier: i.clone(),
                    holder: Some(holder),
                })
                .collect()
        }
        match self {
            Self::Merged(merged) => vec![IndexChange::Merge {
                absorbed: merged.absorbed,
                survivor: customer,
            }],
            Self::Restored(separation) => std::iter::once(IndexChange::Restore {
                customer,
                members: separation
                    .streams
                    .iter()
                    .copied()
                    .filter(|c| *c != customer)
                    .collect(),
            })
            .chain(hold(&separation.identifiers, customer))
            .collect(),
            Self::SplitOff(separation) => hold(&separation.identifiers, customer),
            Self::Linked(linked) => hold(std::slice::from_ref(&linked.identifier), customer),
            // Moved to another customer: that customer's link gives it.
            Self::Unlinked(unlinked) if unlinked.to.is_none() => vec![IndexChange::Hold {
                identifier: unlinked.identifier.clone(),
                holder: None,
            }],
            Self::Elsewhere { customer, fact } => fact.index_changes(*customer),
            // The giving side of a separation: the part's fact gives the identifiers.
            Self::Touchpoint(_)
            | Self::MergedInto(_)
            | Self::Erased(_)
            | Self::MergeUndone(_)
            | Self::Split(_)
            | Self::Unlinked(_) => vec![],
        }
    }
}

impl CustomerFact {
    /// The index changes of this fact when the log is replayed: [`Self::index_changes`], and
    /// also, from the giving side of a move (an identifier linked elsewhere, a part split off
    /// or restored), the holds the receiving side's fact gives. Both facts are written in one
    /// commit, so the holds agree; but the receiver's fact is sealed with the receiver's key,
    /// and once the receiver is erased only the giver's still reads.
    pub fn replayed_index_changes(&self, customer: CustomerId) -> Vec<IndexChange> {
        let mut changes = self.index_changes(customer);
        match self {
            Self::Unlinked(IdentifierUnlinked {
                identifier,
                to: Some(to),
                ..
            }) => changes.push(IndexChange::Hold {
                identifier: identifier.clone(),
                holder: Some(*to),
            }),
            Self::Split(separation) | Self::MergeUndone(separation) => {
                changes.extend(separation.identifiers.iter().map(|i| IndexChange::Hold {
                    identifier: i.clone(),
                    holder: Some(separation.other),
                }));
            }
            _ => {}
        }
        changes
    }
}

/// A change to the identity index, derived from a [`CustomerFact`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexChange {
    /// `absorbed` resolves to `survivor` from now on.
    Merge {
        /// The customer closed.
        absorbed: CustomerId,
        /// The customer that goes on.
        survivor: CustomerId,
    },
    /// `customer` is live again, and so are `members` (merged into it before), resolving to it.
    Restore {
        /// The customer restored.
        customer: CustomerId,
        /// The customers merged into it before.
        members: Vec<CustomerId>,
    },
    /// `identifier` is held by `holder` (or nobody).
    Hold {
        /// The pseudonym.
        identifier: Identifier,
        /// Its holder.
        holder: Option<CustomerId>,
    },
}

impl DomainEvent for CustomerFact {
    fn event_type(&self) -> String {
        match self {
            Self::Touchpoint(_) => "touchpoint",
            Self::Merged(_) => CUSTOMER_MERGED,
            Self::MergedInto(_) => CUSTOMER_MERGED_INTO,
            Self::Erased(_) => CUSTOMER_ERASED,
            Self::MergeUndone(_) => MERGE_UNDONE,
            Self::Restored(_) => CUSTOMER_RESTORED,
            Self::Split(_) => CUSTOMER_SPLIT,
            Self::SplitOff(_) => CUSTOMER_SPLIT_OFF,
            Self::Linked(_) => IDENTIFIER_LINKED,
            Self::Unlinked(_) => IDENTIFIER_UNLINKED,
            Self::Elsewhere { fact, .. } => return fact.event_type(),
        }
        .to_owned()
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

/// What a live customer's decisions are made over.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// Whether any event made this customer.
    known: bool,
    /// Whether it was erased.
    erased: bool,
    /// The customer it was merged into, if it was.
    merged_into: Option<CustomerId>,
    /// The streams and moved touchpoints it is made of besides its own stream.
    holdings: Holdings,
    /// The pseudonyms it holds.
    held: BTreeSet<Identifier>,
    /// The touchpoints it owns, in log order.
    touchpoints: Vec<OwnedTouchpoint>,
}

impl Customer {
    /// A live customer as read from the store: what it holds, the touchpoints it owns (log
    /// order) and its holdings.
    pub fn loaded(
        held: BTreeSet<Identifier>,
        touchpoints: Vec<OwnedTouchpoint>,
        holdings: Holdings,
        erased: bool,
    ) -> Self {
        Self {
            known: true,
            erased,
            merged_into: None,
            holdings,
            held,
            touchpoints,
        }
    }

    /// The pseudonyms it holds.
    pub fn held(&self) -> &BTreeSet<Identifier> {
        &self.held
    }

    /// Its holdings.
    pub fn holdings(&self) -> &Holdings {
        &self.holdings
    }

    /// The customer it was merged into, if it was.
    pub fn merged_into(&self) -> Option<CustomerId> {
        self.merged_into
    }

    /// The facts `command` gives, decided over the current state: none when it is in place
    /// already. Pure: [`Aggregate::handle`] writes what this returns.
    pub fn decide(&self, command: CustomerCommand) -> Result<Vec<CustomerFact>, Refusal> {
        let me = match &command {
            CustomerCommand::Merge { survivor: c, .. }
            | CustomerCommand::UndoMerge { giver: c, .. }
            | CustomerCommand::Split { customer: c, .. }
            | CustomerCommand::SplitExactly { customer: c, .. }
            | CustomerCommand::Link { customer: c, .. }
            | CustomerCommand::Unlink { customer: c, .. } => *c,
        };
        if !self.known {
            return Err(Refusal::Unknown(me));
        }
        if self.erased {
            return Err(Refusal::Erased(me));
        }
        match command {
            CustomerCommand::Merge {
                survivor,
                absorbed,
                cause,
                rules_version,
            } => Ok(self.merge(survivor, absorbed, cause, rules_version)),
            CustomerCommand::UndoMerge { giver, part, core } => {
                Ok(self.undo_merge(giver, &part, &core))
            }
            CustomerCommand::Split {
                customer,
                part,
                identifiers,
                core,
            } => self.split(customer, part, &identifiers, None, &core),
            CustomerCommand::SplitExactly {
                customer,
                part,
                positions,
                identifiers,
            } => self.split(
                customer,
                part,
                &identifiers,
                Some(&positions),
                &BTreeSet::new(),
            ),
            CustomerCommand::Link {
                customer,
                identifier,
                holder,
                blocked,
            } => {
                if blocked {
                    return Err(Refusal::Blocked {
                        kind: identifier.kind.to_string(),
                    });
                }
                if holder == Some(customer) {
                    return Ok(vec![]);
                }
                let mut facts = vec![CustomerFact::Linked(IdentifierLinked {
                    identifier: identifier.clone(),
                    from: holder,
                })];
                facts.extend(holder.map(|holder| {
                    CustomerFact::elsewhere(
                        holder,
                        CustomerFact::Unlinked(IdentifierUnlinked {
                            identifier,
                            to: Some(customer),
                            blocked: false,
                        }),
                    )
                }));
                Ok(facts)
            }
            CustomerCommand::Unlink {
                customer,
                identifier,
                holder,
                blocked,
            } => match holder {
                None => Ok(vec![]),
                Some(holder) if holder != customer => Err(Refusal::HeldByOther {
                    kind: identifier.kind.to_string(),
                    holder,
                    customer,
                }),
                Some(_) => Ok(vec![CustomerFact::Unlinked(IdentifierUnlinked {
                    identifier,
                    to: None,
                    blocked,
                })]),
            },
        }
    }

    fn merge(
        &self,
        survivor: CustomerId,
        absorbed: CustomerId,
        cause: EventId,
        rules_version: u32,
    ) -> Vec<CustomerFact> {
        if survivor == absorbed {
            return vec![];
        }
        vec![
            CustomerFact::Merged(CustomerMerged {
                absorbed,
                evidence: vec![],
                cause,
                rules_version,
            }),
            CustomerFact::elsewhere(
                absorbed,
                CustomerFact::MergedInto(CustomerMergedInto {
                    survivor,
                    evidence: vec![],
                    cause,
                    rules_version,
                }),
            ),
        ]
    }

    /// Gives the part back what it owned when it was merged, what came through its
    /// identifiers since, and the identifiers its streams gave it that the giver still holds.
    fn undo_merge(
        &self,
        giver: CustomerId,
        part: &PartRecord,
        core: &BTreeSet<IdentifierKind>,
    ) -> Vec<CustomerFact> {
        let streams = &part.streams;
        let owned = &self.touchpoints;
        // What the part owned when it was merged, and the giver still owns.
        let taken_back: BTreeSet<Position> = owned
            .iter()
            .filter(|o| {
                (streams.contains(&o.stream) && part.holdings.keeps(o.position))
                    || part.holdings.moved_in.contains(&o.position)
            })
            .map(|o| o.position)
            .collect();
        // What gave the part identifiers and took them away, in log order: its streams' events,
        // and the links of the touchpoints it owned that are on other streams.
        let mut claims: Vec<&Claim> = part.claims.iter().collect();
        let moved_links: Vec<Claim> = owned
            .iter()
            .filter(|o| taken_back.contains(&o.position) && !streams.contains(&o.stream))
            .map(|o| Claim {
                position: o.position,
                given: true,
                identifiers: o.linked.iter().cloned().collect(),
            })
            .collect();
        claims.extend(moved_links.iter());
        claims.sort_by_key(|claim| claim.position);
        let mut claimed: BTreeSet<&Identifier> = BTreeSet::new();
        for claim in claims {
            for identifier in &claim.identifiers {
                if claim.given {
                    claimed.insert(identifier);
                } else {
                    claimed.remove(identifier);
                }
            }
        }
        let identifiers: BTreeSet<Identifier> = claimed
            .into_iter()
            .filter(|i| self.held.contains(*i))
            .cloned()
            .collect();
        let division = divide(
            owned,
            &self.held,
            identifiers,
            &taken_back,
            core,
            |o| !streams.contains(&o.stream),
            |o| o.position > part.merged_at,
        );
        let owned_positions: BTreeSet<Position> = owned.iter().map(|o| o.position).collect();
        // Touchpoints on the part's streams that do not go with it: the giver keeps those it
        // owns; others belong to third customers already.
        let excluded: Vec<Position> = part
            .on_streams
            .difference(&division.going)
            .copied()
            .collect();
        let separation = Separation {
            other: part.absorbed,
            streams: streams.clone(),
            touchpoints: division.moved_elsewhere,
            excluded: excluded
                .iter()
                .copied()
                .filter(|p| owned_positions.contains(p))
                .collect(),
            released: part
                .on_streams
                .intersection(&division.going)
                .copied()
                .filter(|p| self.holdings.moved_in.contains(p))
                .collect(),
            kept: division.kept,
            identifiers: division.identifiers.into_iter().collect(),
        };
        let restored = Separation {
            other: giver,
            excluded,
            released: vec![],
            ..separation.clone()
        };
        vec![
            CustomerFact::MergeUndone(separation),
            CustomerFact::elsewhere(part.absorbed, CustomerFact::Restored(restored)),
        ]
    }

    /// A split by identifiers, or of exactly the touchpoints at `exact`.
    fn split(
        &self,
        customer: CustomerId,
        part: CustomerId,
        chosen: &[(Identifier, Option<CustomerId>)],
        exact: Option<&BTreeSet<Position>>,
        core: &BTreeSet<IdentifierKind>,
    ) -> Result<Vec<CustomerFact>, Refusal> {
        let taken: BTreeSet<Identifier> = chosen
            .iter()
            .map(|(i, _)| i)
            .filter(|i| self.held.contains(*i))
            .cloned()
            .collect();
        if taken.is_empty() && exact.is_none() {
            // Split already, or never held: either way there is nothing to move.
            return Ok(vec![]);
        }
        if let Some((id, holder)) = chosen.iter().find(|(i, _)| !self.held.contains(i)) {
            let kind = id.kind.to_string();
            return Err(match holder {
                Some(holder) => Refusal::HeldByOther {
                    kind,
                    holder: *holder,
                    customer,
                },
                None => Refusal::NotHeld { kind, customer },
            });
        }
        let division = match exact {
            None => divide(
                &self.touchpoints,
                &self.held,
                taken,
                &BTreeSet::new(),
                core,
                |_| true,
                |_| true,
            ),
            Some(positions) => {
                let going: BTreeSet<Position> = self
                    .touchpoints
                    .iter()
                    .map(|o| o.position)
                    .filter(|p| positions.contains(p))
                    .collect();
                if going.is_empty() {
                    return Ok(vec![]);
                }
                super::division::Division {
                    moved_elsewhere: going.iter().copied().collect(),
                    going,
                    kept: vec![],
                    identifiers: taken,
                }
            }
        };
        let separation = Separation {
            other: part,
            streams: vec![],
            touchpoints: division.moved_elsewhere,
            excluded: vec![],
            released: vec![],
            kept: division.kept,
            identifiers: division.identifiers.into_iter().collect(),
        };
        let split_off = Separation {
            other: customer,
            ..separation.clone()
        };
        Ok(vec![
            CustomerFact::Split(separation),
            CustomerFact::elsewhere(part, CustomerFact::SplitOff(split_off)),
        ])
    }
}

impl Aggregate for Customer {
    const TYPE: &'static str = "customer";
    type Command = CustomerCommand;
    type Event = CustomerFact;
    type Error = Refusal;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for fact in self.decide(command)? {
            sink.write(fact, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, fact: Self::Event) {
        match fact {
            CustomerFact::Touchpoint(touchpoint) => {
                self.known = true;
                self.held.extend(touchpoint.linked.iter().cloned());
                self.touchpoints.push(touchpoint);
            }
            CustomerFact::Merged(merged) => {
                // The absorbed customer's touchpoints and identifiers are folded from its own
                // facts; the merge adds its stream.
                self.holdings.streams.insert(merged.absorbed);
            }
            CustomerFact::MergedInto(merged) => self.merged_into = Some(merged.survivor),
            CustomerFact::Erased(_) => self.erased = true,
            CustomerFact::MergeUndone(separation) | CustomerFact::Split(separation) => {
                for identifier in &separation.identifiers {
                    self.held.remove(identifier);
                }
                let excluded: BTreeSet<Position> = separation.excluded.iter().copied().collect();
                self.touchpoints.retain(|t| {
                    !separation.touchpoints.contains(&t.position)
                        && (!separation.streams.contains(&t.stream)
                            || excluded.contains(&t.position))
                });
                self.holdings.give(&separation);
            }
            CustomerFact::Restored(separation) | CustomerFact::SplitOff(separation) => {
                self.known = true;
                self.merged_into = None;
                self.held.extend(separation.identifiers.iter().cloned());
                // The part's own stream is the first it takes (none for a split).
                let own = separation.streams.first().copied().unwrap_or_default();
                self.holdings = Holdings::of_part(own, &separation);
            }
            CustomerFact::Linked(linked) => {
                self.held.insert(linked.identifier);
            }
            CustomerFact::Unlinked(unlinked) => {
                self.held.remove(&unlinked.identifier);
            }
            CustomerFact::Elsewhere { .. } => {}
        }
    }
}
