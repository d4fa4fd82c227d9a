//! Given/when/then tests of every customer command, and of each refusal.

use std::collections::BTreeSet;

use cqrs_es::test::TestFramework;
use cqrs_es::Aggregate;
use uuid::Uuid;

use super::*;
use crate::event_log::{EventId, Position};
use crate::events::{
    CustomerErased, CustomerMerged, CustomerMergedInto, IdentifierLinked, IdentifierUnlinked,
    Separation,
};
use crate::identifier::{Identifier, IdentifierKind};

type Given = TestFramework<Customer>;

fn id(n: u128) -> CustomerId {
    CustomerId::from_uuid(Uuid::from_u128(n))
}

/// The customer deciding, `B`, a customer merged into it before, `A`, and a third, `C`.
const A: u128 = 1;
const B: u128 = 2;
const C: u128 = 3;
const PART: u128 = 9;

fn ident(kind: &str, value: &str) -> Identifier {
    Identifier {
        kind: IdentifierKind::new(kind).expect("a kind"),
        value: value.to_owned(),
    }
}

fn phone(value: &str) -> Identifier {
    ident("phone", value)
}

fn device(value: &str) -> Identifier {
    ident("device_id", value)
}

fn core() -> BTreeSet<IdentifierKind> {
    [IdentifierKind::new("phone").expect("a kind")].into()
}

/// A touchpoint at `position` on `stream` that carried `carried` and linked `linked`.
fn touchpoint(
    position: Position,
    stream: u128,
    carried: &[&Identifier],
    linked: &[&Identifier],
) -> CustomerFact {
    CustomerFact::Touchpoint(OwnedTouchpoint {
        position,
        stream: id(stream),
        carried: carried.iter().map(|i| (*i).clone()).collect(),
        linked: linked.iter().map(|i| (*i).clone()).collect(),
    })
}

fn erased() -> CustomerFact {
    CustomerFact::Erased(CustomerErased {
        customers: vec![id(B)],
    })
}

fn cause() -> EventId {
    EventId::from_uuid(Uuid::from_u128(77))
}

fn merge(absorbed: u128) -> CustomerCommand {
    CustomerCommand::Merge {
        survivor: id(B),
        absorbed: id(absorbed),
        cause: cause(),
        rules_version: 3,
    }
}

fn link(identifier: &Identifier, holder: Option<u128>, blocked: bool) -> CustomerCommand {
    CustomerCommand::Link {
        customer: id(B),
        identifier: identifier.clone(),
        holder: holder.map(id),
        blocked,
    }
}

fn unlink(identifier: &Identifier, holder: Option<u128>) -> CustomerCommand {
    CustomerCommand::Unlink {
        customer: id(B),
        identifier: identifier.clone(),
        holder: holder.map(id),
        blocked: false,
    }
}

fn split(identifiers: &[(&Identifier, Option<u128>)]) -> CustomerCommand {
    CustomerCommand::Split {
        customer: id(B),
        part: id(PART),
        identifiers: identifiers
            .iter()
            .map(|(i, h)| ((*i).clone(), h.map(id)))
            .collect(),
        core: core(),
    }
}

/// `separation` on the giver and its mirror on the part, as a split writes them.
fn split_facts(separation: Separation) -> Vec<CustomerFact> {
    let mirror = Separation {
        other: id(B),
        ..separation.clone()
    };
    vec![
        CustomerFact::Split(separation),
        CustomerFact::Elsewhere {
            customer: id(PART),
            fact: Box::new(CustomerFact::SplitOff(mirror)),
        },
    ]
}

#[test]
fn a_merge_closes_the_absorbed_customer_on_both_streams() {
    let phone_b = phone("+8613900000002");
    Given::with(())
        .given(vec![touchpoint(1, B, &[&phone_b], &[&phone_b])])
        .when(merge(C))
        .then_expect_events(vec![
            CustomerFact::Merged(CustomerMerged {
                absorbed: id(C),
                evidence: vec![],
                cause: cause(),
                rules_version: 3,
            }),
            CustomerFact::Elsewhere {
                customer: id(C),
                fact: Box::new(CustomerFact::MergedInto(CustomerMergedInto {
                    survivor: id(B),
                    evidence: vec![],
                    cause: cause(),
                    rules_version: 3,
                })),
            },
        ]);
}

#[test]
fn a_customer_merged_with_itself_changes_nothing() {
    let phone_b = phone("+8613900000002");
    Given::with(())
        .given(vec![touchpoint(1, B, &[&phone_b], &[&phone_b])])
        .when(merge(B))
        .then_expect_events(vec![]);
}

#[test]
fn an_unknown_or_erased_customer_decides_nothing() {
    Given::with(())
        .given_no_previous_events()
        .when(merge(C))
        .then_expect_error(Refusal::Unknown(id(B)));
    let phone_b = phone("+8613900000002");
    Given::with(())
        .given(vec![touchpoint(1, B, &[&phone_b], &[&phone_b]), erased()])
        .when(link(&phone("+8613900000005"), None, false))
        .then_expect_error(Refusal::Erased(id(B)));
    Given::with(())
        .given(vec![touchpoint(1, B, &[&phone_b], &[&phone_b]), erased()])
        .when(merge(C))
        .then_expect_error_message(&format!("customer {} was erased", id(B)));
}

#[test]
fn a_link_takes_the_identifier_from_its_holder() {
    let phone_b = phone("+8613900000002");
    let email = ident("email", "pseudonym-of-an-email");
    let given = vec![touchpoint(1, B, &[&phone_b], &[&phone_b])];
    Given::with(())
        .given(given.clone())
        .when(link(&email, Some(C), false))
        .then_expect_events(vec![
            CustomerFact::Linked(IdentifierLinked {
                identifier: email.clone(),
                from: Some(id(C)),
            }),
            CustomerFact::Elsewhere {
                customer: id(C),
                fact: Box::new(CustomerFact::Unlinked(IdentifierUnlinked {
                    identifier: email.clone(),
                    to: Some(id(B)),
                    blocked: false,
                })),
            },
        ]);
    Given::with(())
        .given(given.clone())
        .when(link(&email, None, false))
        .then_expect_events(vec![CustomerFact::Linked(IdentifierLinked {
            identifier: email.clone(),
            from: None,
        })]);
}

#[test]
fn a_link_in_place_changes_nothing_and_a_blocked_value_links_nobody() {
    let phone_b = phone("+8613900000002");
    let given = vec![touchpoint(1, B, &[&phone_b], &[&phone_b])];
    Given::with(())
        .given(given.clone())
        .when(link(&phone_b, Some(B), false))
        .then_expect_events(vec![]);
    Given::with(())
        .given(given)
        .when(link(&phone("+8613900000009"), None, true))
        .then_expect_error_message("the phone identifier given is blocked: it links no customer");
}

#[test]
fn an_unlink_frees_the_identifier_or_names_who_holds_it() {
    let phone_b = phone("+8613900000002");
    let given = vec![touchpoint(1, B, &[&phone_b], &[&phone_b])];
    Given::with(())
        .given(given.clone())
        .when(unlink(&phone_b, Some(B)))
        .then_expect_events(vec![CustomerFact::Unlinked(IdentifierUnlinked {
            identifier: phone_b.clone(),
            to: None,
            blocked: false,
        })]);
    Given::with(())
        .given(given.clone())
        .when(unlink(&phone_b, None))
        .then_expect_events(vec![]);
    Given::with(())
        .given(given)
        .when(unlink(&phone_b, Some(C)))
        .then_expect_error(Refusal::HeldByOther {
            kind: "phone".into(),
            holder: id(C),
            customer: id(B),
        });
}

/// B holds two phones and a device; touchpoint 1 came through the first phone and the
/// device, 2 through the second phone and linked it, 3 through the second phone and the
/// device, 4 through the device alone and linked it.
fn two_phones() -> (Vec<CustomerFact>, Identifier, Identifier, Identifier) {
    let (p1, p2, d) = (
        phone("+8613900000001"),
        phone("+8613900000002"),
        device("tablet"),
    );
    let given = vec![
        touchpoint(1, B, &[&p1, &d], &[&p1]),
        touchpoint(2, B, &[&p2], &[&p2]),
        touchpoint(3, B, &[&p2, &d], &[]),
        touchpoint(4, B, &[&d], &[&d]),
    ];
    (given, p1, p2, d)
}

#[test]
fn a_split_takes_the_touchpoints_that_came_through_the_identifiers() {
    let (given, _, p2, d) = two_phones();
    // Touchpoints 2 and 3 carried the second phone and no phone that stays: they go. The
    // device stays, since touchpoints that stay carried it.
    Given::with(())
        .given(given.clone())
        .when(split(&[(&p2, Some(B))]))
        .then_expect_events(split_facts(Separation {
            other: id(PART),
            touchpoints: vec![2, 3],
            identifiers: vec![p2.clone()],
            ..Separation::default()
        }));
    // Splitting the device: touchpoints 1 and 3 carried a phone that stays, so they stay and
    // are reported as kept; 4 goes.
    Given::with(())
        .given(given)
        .when(split(&[(&d, Some(B))]))
        .then_expect_events(split_facts(Separation {
            other: id(PART),
            touchpoints: vec![4],
            kept: vec![1, 3],
            identifiers: vec![d],
            ..Separation::default()
        }));
}

#[test]
fn an_identifier_follows_the_touchpoint_that_linked_it_unless_one_that_stays_carried_it() {
    let (p1, p2, d) = (
        phone("+8613900000001"),
        phone("+8613900000002"),
        device("tablet"),
    );
    // The device came only with the second phone: it follows it.
    let given = vec![
        touchpoint(1, B, &[&p1], &[&p1]),
        touchpoint(2, B, &[&p2, &d], &[&p2, &d]),
    ];
    Given::with(())
        .given(given)
        .when(split(&[(&p2, Some(B))]))
        .then_expect_events(split_facts(Separation {
            other: id(PART),
            touchpoints: vec![2],
            identifiers: vec![d, p2],
            ..Separation::default()
        }));
}

#[test]
fn a_split_of_nothing_held_changes_nothing_and_one_of_another_customers_is_refused() {
    let (given, p1, _, _) = two_phones();
    let stranger = phone("+8613900000008");
    Given::with(())
        .given(given.clone())
        .when(split(&[(&stranger, None)]))
        .then_expect_events(vec![]);
    Given::with(())
        .given(given.clone())
        .when(split(&[(&p1, Some(B)), (&stranger, Some(C))]))
        .then_expect_error(Refusal::HeldByOther {
            kind: "phone".into(),
            holder: id(C),
            customer: id(B),
        });
    Given::with(())
        .given(given)
        .when(split(&[(&p1, Some(B)), (&stranger, None)]))
        .then_expect_error_message(&format!(
            "the phone identifier given is held by nobody, not by {}",
            id(B)
        ));
}

#[test]
fn a_split_of_exact_touchpoints_moves_only_those_it_owns() {
    let (given, _, p2, _) = two_phones();
    let exactly = |positions: &[Position], identifiers: Vec<(Identifier, Option<CustomerId>)>| {
        CustomerCommand::SplitExactly {
            customer: id(B),
            part: id(PART),
            positions: positions.iter().copied().collect(),
            identifiers,
        }
    };
    Given::with(())
        .given(given.clone())
        .when(exactly(&[2, 3, 99], vec![(p2.clone(), Some(id(B)))]))
        .then_expect_events(split_facts(Separation {
            other: id(PART),
            touchpoints: vec![2, 3],
            identifiers: vec![p2],
            ..Separation::default()
        }));
    Given::with(())
        .given(given)
        .when(exactly(&[99], vec![]))
        .then_expect_events(vec![]);
}

/// A (phone a, touchpoint 1) was merged into B (phone b, touchpoint 2); then touchpoint 3 came
/// through phone a, and touchpoint 4 through both phones.
fn merged_a() -> (Vec<CustomerFact>, PartRecord, Identifier, Identifier) {
    let (pa, pb) = (phone("+8613900000001"), phone("+8613900000002"));
    let given = vec![
        touchpoint(1, A, &[&pa], &[&pa]),
        touchpoint(2, B, &[&pb], &[&pb]),
        CustomerFact::Merged(CustomerMerged {
            absorbed: id(A),
            evidence: vec![pa.clone(), pb.clone()],
            cause: cause(),
            rules_version: 1,
        }),
        touchpoint(5, B, &[&pa], &[]),
        touchpoint(6, B, &[&pa, &pb], &[]),
    ];
    let part = PartRecord {
        absorbed: id(A),
        streams: vec![id(A)],
        holdings: Holdings::default(),
        on_streams: [1, 4].into(),
        claims: vec![
            Claim {
                position: 1,
                given: true,
                identifiers: vec![pa.clone()],
            },
            // Touchpoint 4, on A's stream, belongs to C already (moved out before the merge).
            Claim {
                position: 4,
                given: true,
                identifiers: vec![],
            },
        ],
        merged_at: 3,
    };
    (given, part, pa, pb)
}

#[test]
fn an_undone_merge_gives_back_the_part_and_what_came_through_its_identifiers() {
    let (given, part, pa, _) = merged_a();
    let undo = CustomerCommand::UndoMerge {
        giver: id(B),
        part,
        core: core(),
    };
    let separation = Separation {
        other: id(A),
        streams: vec![id(A)],
        touchpoints: vec![5],
        kept: vec![6],
        identifiers: vec![pa],
        ..Separation::default()
    };
    let restored = Separation {
        other: id(B),
        excluded: vec![4],
        ..separation.clone()
    };
    Given::with(())
        .given(given)
        .when(undo)
        .then_expect_events(vec![
            CustomerFact::MergeUndone(separation),
            CustomerFact::Elsewhere {
                customer: id(A),
                fact: Box::new(CustomerFact::Restored(restored)),
            },
        ]);
}

#[test]
fn an_identifier_unlinked_from_the_part_before_the_merge_stays_with_the_giver() {
    let (given, mut part, pa, _) = merged_a();
    part.claims.push(Claim {
        position: 3,
        given: false,
        identifiers: vec![pa.clone()],
    });
    let facts = Customer::default();
    let mut customer = facts;
    for fact in given {
        customer.apply(fact);
    }
    let decided = customer
        .decide(CustomerCommand::UndoMerge {
            giver: id(B),
            part,
            core: core(),
        })
        .expect("decided");
    let Some(CustomerFact::MergeUndone(separation)) = decided.first() else {
        panic!("no merge undone: {decided:?}");
    };
    assert!(separation.identifiers.is_empty(), "{separation:?}");
    assert!(separation.touchpoints.is_empty(), "{separation:?}");
}

#[test]
fn an_undone_merge_leaves_the_giver_what_it_owned_before_the_merge() {
    // B's touchpoint 2 came through phone x; an operator then linked x to A (position 3), and
    // A was merged into B (position 4). Undone, A takes x back, but touchpoint 2 was B's before
    // the merge and stays with B.
    let (x, pa) = (phone("+8613900000007"), phone("+8613900000001"));
    let given = vec![
        touchpoint(1, A, &[&pa], &[&pa]),
        touchpoint(2, B, &[&x], &[]),
        CustomerFact::Merged(CustomerMerged {
            absorbed: id(A),
            evidence: vec![],
            cause: cause(),
            rules_version: 1,
        }),
        CustomerFact::Linked(IdentifierLinked {
            identifier: x.clone(),
            from: Some(id(B)),
        }),
    ];
    let part = PartRecord {
        absorbed: id(A),
        streams: vec![id(A)],
        holdings: Holdings::default(),
        on_streams: [1].into(),
        claims: vec![
            Claim {
                position: 1,
                given: true,
                identifiers: vec![pa.clone()],
            },
            Claim {
                position: 3,
                given: true,
                identifiers: vec![x.clone()],
            },
        ],
        merged_at: 4,
    };
    let separation = Separation {
        other: id(A),
        streams: vec![id(A)],
        identifiers: vec![pa, x],
        ..Separation::default()
    };
    Given::with(())
        .given(given)
        .when(CustomerCommand::UndoMerge {
            giver: id(B),
            part,
            core: core(),
        })
        .then_expect_events(vec![
            CustomerFact::MergeUndone(separation.clone()),
            CustomerFact::Elsewhere {
                customer: id(A),
                fact: Box::new(CustomerFact::Restored(Separation {
                    other: id(B),
                    ..separation
                })),
            },
        ]);
}

#[test]
fn the_state_follows_the_facts_decided() {
    let (given, p1, p2, _) = two_phones();
    let mut customer = Customer::default();
    for fact in given {
        customer.apply(fact);
    }
    assert_eq!(customer.held().len(), 3);
    let decided = customer.decide(split(&[(&p2, Some(B))])).expect("decided");
    for fact in decided {
        customer.apply(fact);
    }
    assert!(!customer.held().contains(&p2) && customer.held().contains(&p1));
    assert_eq!(customer.holdings().moved_out, [2, 3].into());
    // Split again: nothing is left to move.
    assert_eq!(customer.decide(split(&[(&p2, Some(PART))])), Ok(vec![]));
    let undone = CustomerFact::MergeUndone(Separation {
        other: id(A),
        streams: vec![id(A)],
        ..Separation::default()
    });
    customer.apply(CustomerFact::Merged(CustomerMerged {
        absorbed: id(A),
        evidence: vec![],
        cause: cause(),
        rules_version: 1,
    }));
    assert!(customer.holdings().streams.contains(&id(A)));
    customer.apply(undone);
    assert!(customer.holdings().streams.is_empty());
    customer.apply(CustomerFact::MergedInto(CustomerMergedInto {
        survivor: id(C),
        evidence: vec![],
        cause: cause(),
        rules_version: 1,
    }));
    assert_eq!(customer.merged_into(), Some(id(C)));
}

#[test]
fn the_index_changes_follow_from_the_facts() {
    let (given, _, p2, _) = two_phones();
    let mut customer = Customer::default();
    for fact in given {
        customer.apply(fact);
    }
    let changes = |facts: Vec<CustomerFact>| -> Vec<IndexChange> {
        facts.iter().flat_map(|f| f.index_changes(id(B))).collect()
    };
    let split = customer.decide(split(&[(&p2, Some(B))])).expect("decided");
    assert_eq!(
        changes(split),
        vec![IndexChange::Hold {
            identifier: p2.clone(),
            holder: Some(id(PART)),
        }]
    );
    let merged = customer.decide(merge(C)).expect("decided");
    assert_eq!(
        changes(merged),
        vec![IndexChange::Merge {
            absorbed: id(C),
            survivor: id(B),
        }]
    );
    let email = ident("email", "e");
    let linked = customer
        .decide(link(&email, Some(C), false))
        .expect("decided");
    // Moved: only the new holder's link changes the index.
    assert_eq!(
        changes(linked),
        vec![IndexChange::Hold {
            identifier: email,
            holder: Some(id(B)),
        }]
    );
    let unlinked = customer.decide(unlink(&p2, Some(B))).expect("decided");
    assert_eq!(
        changes(unlinked),
        vec![IndexChange::Hold {
            identifier: p2,
            holder: None,
        }]
    );
    let (given, part, pa, _) = merged_a();
    let mut giver = Customer::default();
    for fact in given {
        giver.apply(fact);
    }
    let undone = giver
        .decide(CustomerCommand::UndoMerge {
            giver: id(B),
            part,
            core: core(),
        })
        .expect("decided");
    assert_eq!(
        changes(undone),
        vec![
            IndexChange::Restore {
                customer: id(A),
                members: vec![],
            },
            IndexChange::Hold {
                identifier: pa,
                holder: Some(id(A)),
            },
        ]
    );
}
