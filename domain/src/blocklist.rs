//! The identity blocklist as an aggregate: identifier values operators blocked so that they
//! never link a customer again. Its stream ([`BLOCKLIST_STREAM`]) holds one
//! [`IDENTIFIER_BLOCKED`] event per value, naming only its pseudonym; whether a command blocks
//! anything is decided here, over the state folded from those events. It follows cqrs-es's
//! [`Aggregate`] (handle a command into events, apply an event); Patron's store commits its
//! events together with the holder's unlink and the identity index (`src/correction/`).

use std::collections::BTreeSet;
use std::convert::Infallible;

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::events::{IdentifierBlocked, BLOCKLIST_STREAM, IDENTIFIER_BLOCKED};
use crate::identifier::Identifier;

/// The values blocked so far (their pseudonyms).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocklist {
    blocked: BTreeSet<Identifier>,
}

/// What may be asked of the blocklist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlocklistCommand {
    /// Block a value, named by its pseudonym. Blocking a value blocked already changes nothing.
    Block {
        /// The pseudonym.
        identifier: Identifier,
    },
}

/// The blocklist's events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlocklistEvent {
    /// A value was blocked.
    Blocked(IdentifierBlocked),
}

impl DomainEvent for BlocklistEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Blocked(_) => IDENTIFIER_BLOCKED.to_owned(),
        }
    }

    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl Blocklist {
    /// Whether the value with this pseudonym is blocked.
    pub fn is_blocked(&self, identifier: &Identifier) -> bool {
        self.blocked.contains(identifier)
    }

    /// The events `command` gives, decided over the current state (none when it changes
    /// nothing). Pure: [`Aggregate::handle`] writes what this returns.
    pub fn decide(&self, command: BlocklistCommand) -> Vec<BlocklistEvent> {
        match command {
            BlocklistCommand::Block { identifier } if !self.is_blocked(&identifier) => {
                vec![BlocklistEvent::Blocked(IdentifierBlocked { identifier })]
            }
            BlocklistCommand::Block { .. } => Vec::new(),
        }
    }
}

impl Aggregate for Blocklist {
    const TYPE: &'static str = BLOCKLIST_STREAM;
    type Command = BlocklistCommand;
    type Event = BlocklistEvent;
    type Error = Infallible;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command) {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            BlocklistEvent::Blocked(blocked) => {
                self.blocked.insert(blocked.identifier);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identifier::IdentifierKind;
    use cqrs_es::test::TestFramework;

    fn pseudonym(value: &str) -> Identifier {
        Identifier {
            kind: IdentifierKind::new("phone").expect("a kind"),
            value: value.to_owned(),
        }
    }

    fn blocked(value: &str) -> BlocklistEvent {
        BlocklistEvent::Blocked(IdentifierBlocked {
            identifier: pseudonym(value),
        })
    }

    fn block(value: &str) -> BlocklistCommand {
        BlocklistCommand::Block {
            identifier: pseudonym(value),
        }
    }

    #[test]
    fn a_value_not_blocked_is_blocked() {
        TestFramework::<Blocklist>::with(())
            .given_no_previous_events()
            .when(block("p-front-desk"))
            .then_expect_events(vec![blocked("p-front-desk")]);
        TestFramework::<Blocklist>::with(())
            .given(vec![blocked("p-other")])
            .when(block("p-front-desk"))
            .then_expect_events(vec![blocked("p-front-desk")]);
    }

    #[test]
    fn a_value_blocked_already_changes_nothing() {
        TestFramework::<Blocklist>::with(())
            .given(vec![blocked("p-other"), blocked("p-front-desk")])
            .when(block("p-front-desk"))
            .then_expect_events(vec![]);
    }

    #[test]
    fn the_state_is_what_the_events_blocked() {
        let mut list = Blocklist::default();
        for event in [blocked("a"), blocked("b"), blocked("a")] {
            list.apply(event);
        }
        assert!(list.is_blocked(&pseudonym("a")) && list.is_blocked(&pseudonym("b")));
        assert!(!list.is_blocked(&pseudonym("c")));
        assert_eq!(list.decide(block("c")), vec![blocked("c")]);
    }
}
