//! What a live customer is made of: its own stream, the streams of the customers merged into
//! it, and the touchpoints identity corrections moved in or out.
//!
//! A touchpoint stays on the stream it was appended to; a customer's touchpoints are those of
//! its streams, less the ones moved out, plus the ones moved in. Merges add streams, an undone
//! merge takes them away again, a split moves single touchpoints. Profiles and the analytics
//! activity keep their customers' holdings so that a correction can fold a customer again from
//! exactly the touchpoints it owns.

use std::collections::BTreeSet;

use crate::customer::CustomerId;
use crate::event_log::Position;
use crate::events::Separation;
use serde::{Deserialize, Serialize};

/// The streams and moved touchpoints that make up a customer besides its own stream.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holdings {
    /// Customers merged into this one (directly or through others), whose streams it folds.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub streams: BTreeSet<CustomerId>,
    /// Touchpoints of other streams that belong to this customer.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub moved_in: BTreeSet<Position>,
    /// Touchpoints of its streams that belong to another customer.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub moved_out: BTreeSet<Position>,
}

impl Holdings {
    /// Whether the customer is only its own stream.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty() && self.moved_in.is_empty() && self.moved_out.is_empty()
    }

    /// Takes in the holdings of `absorbed`, merged into this customer.
    pub fn absorb(&mut self, absorbed: CustomerId, theirs: &Holdings) {
        self.streams.insert(absorbed);
        self.streams.extend(theirs.streams.iter().copied());
        for position in &theirs.moved_in {
            self.moved_out.remove(position);
            self.moved_in.insert(*position);
        }
        for position in &theirs.moved_out {
            if !self.moved_in.contains(position) {
                self.moved_out.insert(*position);
            }
        }
    }

    /// Gives up the part a separation takes.
    pub fn give(&mut self, separation: &Separation) {
        for stream in &separation.streams {
            self.streams.remove(stream);
        }
        for position in &separation.touchpoints {
            self.moved_in.remove(position);
            self.moved_out.insert(*position);
        }
        for position in &separation.excluded {
            self.moved_out.remove(position);
            self.moved_in.insert(*position);
        }
        for position in &separation.released {
            self.moved_in.remove(position);
        }
    }

    /// The holdings of the part a separation makes a customer of its own.
    pub fn of_part(part: CustomerId, separation: &Separation) -> Holdings {
        Holdings {
            streams: separation
                .streams
                .iter()
                .copied()
                .filter(|c| *c != part)
                .collect(),
            moved_in: separation.touchpoints.iter().copied().collect(),
            moved_out: separation.excluded.iter().copied().collect(),
        }
    }

    /// Every stream a customer `own` with these holdings folds: its own first.
    pub fn all_streams(&self, own: CustomerId) -> Vec<CustomerId> {
        std::iter::once(own)
            .chain(self.streams.iter().copied().filter(|c| *c != own))
            .collect()
    }

    /// Whether a touchpoint at `position` on one of the customer's streams belongs to it.
    pub fn keeps(&self, position: Position) -> bool {
        !self.moved_out.contains(&position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_taken_back_leaves_the_giver_as_before_the_merge() {
        let (b, c) = (CustomerId::new(), CustomerId::new());
        let mut before = Holdings::default();
        before.absorb(c, &Holdings::default());
        let mut merged = before.clone();
        let theirs = Holdings {
            moved_in: [7].into(),
            ..Holdings::default()
        };
        merged.absorb(b, &theirs);
        assert_eq!(merged.streams, [b, c].into());
        let separation = Separation {
            other: b,
            streams: vec![b],
            touchpoints: vec![7],
            ..Separation::default()
        };
        merged.give(&separation);
        assert_eq!(merged.streams, before.streams);
        assert!(!merged.keeps(7) && !merged.moved_in.contains(&7));
        let part = Holdings::of_part(b, &separation);
        assert_eq!(part, theirs);
        assert_eq!(part.all_streams(b), vec![b]);
    }
}
