//! Contacts: each user holds one state for each person they have to do with, and an action
//! by one of them changes both sides at once ([`contact_step`]). A block is silent: the
//! blocked user's requests and clips go nowhere, and they learn nothing they could tell from
//! "this person takes direct clips from contacts only".

use serde::{Deserialize, Serialize};

/// How one user stands towards another, as that user sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ContactState {
    /// I asked them; they have not answered.
    Requested,
    /// They asked me; I have not answered.
    Incoming,
    /// We are contacts.
    Contact,
    /// I blocked them.
    Blocked,
}

impl ContactState {
    /// The word the CLI prints.
    pub fn name(&self) -> &'static str {
        match self {
            ContactState::Requested => "requested",
            ContactState::Incoming => "incoming",
            ContactState::Contact => "contact",
            ContactState::Blocked => "blocked",
        }
    }
}

/// What a user does about another.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContactAction {
    /// Ask to be contacts (or accept, if they asked first).
    Add,
    /// Accept their request.
    Accept,
    /// End the relation (or the request, or the block) on both sides.
    Remove,
    /// Block them: they can no longer reach me.
    Block,
}

/// Who may send a user direct clips.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum DirectFrom {
    /// Every user of the relay (today's behaviour; the default).
    #[default]
    Anyone,
    /// Contacts only.
    Contacts,
}

impl std::str::FromStr for DirectFrom {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "anyone" => Ok(DirectFrom::Anyone),
            "contacts" => Ok(DirectFrom::Contacts),
            other => Err(format!("{other:?} is not `anyone` or `contacts`")),
        }
    }
}

impl std::fmt::Display for DirectFrom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DirectFrom::Anyone => "anyone",
            DirectFrom::Contacts => "contacts",
        })
    }
}

/// Both sides of one relation: the actor's state of the other, and the other's of the actor.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pair {
    /// How the actor sees the other (`None`: no relation).
    pub mine: Option<ContactState>,
    /// How the other sees the actor.
    pub theirs: Option<ContactState>,
}

/// Why an action was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContactRefusal {
    /// Accepting someone who did not ask.
    #[error("they have not asked to be your contact")]
    NoRequest,
}

/// Both sides after the actor does `action`. Whatever the other side is, a block there stays
/// and is never revealed: an `Add` towards someone who blocked the actor looks, to the actor,
/// exactly like a request nobody answered.
pub fn contact_step(action: ContactAction, pair: Pair) -> Result<Pair, ContactRefusal> {
    use ContactState::*;
    let blocked_me = pair.theirs == Some(Blocked);
    // The other side after the actor ends the relation: a block of theirs stays.
    let theirs_ended = if blocked_me { Some(Blocked) } else { None };
    Ok(match action {
        ContactAction::Add => match pair {
            Pair {
                mine: Some(Contact),
                ..
            } => pair,
            _ if blocked_me => Pair {
                mine: Some(Requested),
                theirs: Some(Blocked),
            },
            Pair {
                mine: Some(Incoming),
                ..
            }
            | Pair {
                theirs: Some(Requested),
                ..
            } => Pair {
                mine: Some(Contact),
                theirs: Some(Contact),
            },
            _ => Pair {
                mine: Some(Requested),
                theirs: Some(Incoming),
            },
        },
        ContactAction::Accept => match pair.mine {
            Some(Contact) => pair,
            Some(Incoming) if !blocked_me => Pair {
                mine: Some(Contact),
                theirs: Some(Contact),
            },
            _ => return Err(ContactRefusal::NoRequest),
        },
        ContactAction::Remove => Pair {
            mine: None,
            theirs: theirs_ended,
        },
        ContactAction::Block => Pair {
            mine: Some(Blocked),
            theirs: theirs_ended,
        },
    })
}

/// Whether a recipient takes a direct clip from a sender they see as `recipient_view`.
pub fn may_send_direct(recipient_view: Option<ContactState>, direct_from: DirectFrom) -> bool {
    match recipient_view {
        Some(ContactState::Blocked) => false,
        Some(ContactState::Contact) => true,
        _ => direct_from == DirectFrom::Anyone,
    }
}

#[cfg(test)]
mod tests {
    use super::ContactAction::*;
    use super::ContactState::*;
    use super::*;

    fn step(
        action: ContactAction,
        mine: Option<ContactState>,
        theirs: Option<ContactState>,
    ) -> Result<Pair, ContactRefusal> {
        contact_step(action, Pair { mine, theirs })
    }

    #[test]
    fn a_request_accepted_makes_contacts_on_both_sides() {
        let asked = step(Add, None, None).expect("asks");
        assert_eq!(
            asked,
            Pair {
                mine: Some(Requested),
                theirs: Some(Incoming)
            }
        );
        // Now from the other side: their Incoming is "mine".
        let accepted = step(Accept, asked.theirs, asked.mine).expect("accepts");
        assert_eq!(
            accepted,
            Pair {
                mine: Some(Contact),
                theirs: Some(Contact)
            }
        );
        // Asking someone who asked you is accepting.
        assert_eq!(
            step(Add, Some(Incoming), Some(Requested)),
            Ok(Pair {
                mine: Some(Contact),
                theirs: Some(Contact)
            })
        );
        assert_eq!(step(Accept, None, None), Err(ContactRefusal::NoRequest));
        assert_eq!(
            step(Accept, Some(Requested), Some(Incoming)),
            Err(ContactRefusal::NoRequest),
            "cannot accept your own request"
        );
    }

    #[test]
    fn a_block_is_silent_and_stays_until_its_owner_removes_it() {
        let blocked = step(Block, Some(Contact), Some(Contact)).expect("blocks");
        assert_eq!(
            blocked,
            Pair {
                mine: Some(Blocked),
                theirs: None
            }
        );
        // The blocked one asks again: it looks like an unanswered request; nothing reaches the blocker.
        assert_eq!(
            step(Add, None, Some(Blocked)),
            Ok(Pair {
                mine: Some(Requested),
                theirs: Some(Blocked)
            })
        );
        assert_eq!(
            step(Accept, Some(Incoming), Some(Blocked)),
            Err(ContactRefusal::NoRequest)
        );
        assert_eq!(
            step(Remove, Some(Requested), Some(Blocked)),
            Ok(Pair {
                mine: None,
                theirs: Some(Blocked)
            })
        );
        // The blocker removing the block ends it on both sides.
        assert_eq!(
            step(Remove, Some(Blocked), Some(Requested)),
            Ok(Pair {
                mine: None,
                theirs: None
            })
        );
    }

    #[test]
    fn direct_clips_follow_the_recipients_choice_and_blocks() {
        assert!(may_send_direct(None, DirectFrom::Anyone));
        assert!(!may_send_direct(None, DirectFrom::Contacts));
        assert!(
            !may_send_direct(Some(Incoming), DirectFrom::Contacts),
            "a request is not a contact"
        );
        assert!(may_send_direct(Some(Contact), DirectFrom::Contacts));
        assert!(!may_send_direct(Some(Blocked), DirectFrom::Anyone));
        assert_eq!("contacts".parse::<DirectFrom>(), Ok(DirectFrom::Contacts));
        assert!("all".parse::<DirectFrom>().is_err());
    }
}
