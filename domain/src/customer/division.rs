//! How a customer is divided between itself and a part that leaves it (a split, an undone
//! merge): which touchpoints go, which stay because they carried identifiers of both sides,
//! and which identifiers follow the touchpoints that go.

use std::collections::BTreeSet;

use crate::event_log::Position;
use crate::identifier::{Identifier, IdentifierKind};

use super::OwnedTouchpoint;

/// How [`divide`] divided a customer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Division {
    /// The positions of the touchpoints going to the part.
    pub going: BTreeSet<Position>,
    /// Those of them the part does not get through its own streams.
    pub moved_elsewhere: Vec<Position>,
    /// Touchpoints that carried identifiers of both sides and stay.
    pub kept: Vec<Position>,
    /// The pseudonyms going to the part.
    pub identifiers: BTreeSet<Identifier>,
}

/// Divides a customer's touchpoints (`owned`) and identifiers (`held`) between it and a part
/// taking `identifiers` and the touchpoints in `part`: a touchpoint that carried a taken
/// identifier goes too, unless it also carried a `core` identifier that stays (then it stays,
/// and is reported as kept); an identifier such a touchpoint linked goes with it unless a
/// touchpoint that stays carried it too. The touchpoints in `part` go whatever they carried,
/// and take no identifiers along. `outside` says which moved touchpoints the part does not get
/// through its streams; only touchpoints `movable` says may follow the identifiers.
pub(crate) fn divide(
    owned: &[OwnedTouchpoint],
    held: &BTreeSet<Identifier>,
    mut identifiers: BTreeSet<Identifier>,
    part: &BTreeSet<Position>,
    core: &BTreeSet<IdentifierKind>,
    outside: impl Fn(&OwnedTouchpoint) -> bool,
    movable: impl Fn(&OwnedTouchpoint) -> bool,
) -> Division {
    let core_staying: BTreeSet<&Identifier> = held
        .iter()
        .filter(|i| !identifiers.contains(*i) && core.contains(&i.kind))
        .collect();
    let mut kept = Vec::new();
    let mut going: BTreeSet<Position> = part.clone();
    for o in owned {
        if going.contains(&o.position)
            || !movable(o)
            || !o.carried.iter().any(|i| identifiers.contains(i))
        {
            continue;
        }
        if o.carried.iter().any(|i| core_staying.contains(i)) {
            kept.push(o.position);
        } else {
            going.insert(o.position);
        }
    }
    let staying_carried: BTreeSet<&Identifier> = owned
        .iter()
        .filter(|o| !going.contains(&o.position))
        .flat_map(|o| o.carried.iter())
        .collect();
    let followers: Vec<Identifier> = owned
        .iter()
        .filter(|o| going.contains(&o.position) && !part.contains(&o.position))
        .flat_map(|o| o.linked.iter())
        .filter(|i| held.contains(*i) && !staying_carried.contains(*i))
        .cloned()
        .collect();
    identifiers.extend(followers);
    let moved_elsewhere: Vec<Position> = owned
        .iter()
        .filter(|o| going.contains(&o.position) && outside(o))
        .map(|o| o.position)
        .collect();
    Division {
        going,
        moved_elsewhere,
        kept,
        identifiers,
    }
}
