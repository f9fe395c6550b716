//! Groups users make: a channel with an owner. Members may invite others and leave; only the
//! owner renames or deletes it. A channel an administrator made has no owner, and only the
//! administrator's own commands change it (its members may still leave).

use serde::{Deserialize, Serialize};

/// What a user does to a channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupAction {
    /// Make a new channel owned by the actor, with these other members.
    Create {
        /// Users to add besides the creator.
        members: Vec<String>,
    },
    /// Add a user to the channel.
    Invite {
        /// Who.
        user: String,
    },
    /// Leave the channel.
    Leave,
    /// Give the channel a title people see (its name, the address clips are sent to, stays).
    Rename {
        /// The new title: a display name's rules.
        title: String,
    },
    /// Delete the channel and every clip sent to it.
    Delete,
}

/// How the actor stands in an existing channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupRole {
    /// Not a member.
    Outsider,
    /// A member of a channel a user made.
    Member,
    /// The owner.
    Owner,
    /// A member of a channel an administrator made (it has no owner).
    AdminChannelMember,
}

/// Why an action on a channel was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GroupRefusal {
    /// Not a member (or no such channel: an outsider cannot tell).
    #[error("you are not a member of channel {0}")]
    NotMember(String),
    /// Only the owner may do this.
    #[error("only the owner of channel {0} may rename or delete it")]
    NotOwner(String),
    /// The administrator manages this channel.
    #[error("channel {0} is managed by the relay's administrator")]
    AdminChannel(String),
}

/// Whether a user in `role` may do `action` to the existing channel `name` (`Create` is
/// decided by the relay's setting, not here).
pub fn group_may(action: &GroupAction, role: GroupRole, name: &str) -> Result<(), GroupRefusal> {
    let name = name.to_string();
    match (role, action) {
        (GroupRole::Outsider, _) => Err(GroupRefusal::NotMember(name)),
        (_, GroupAction::Leave) => Ok(()),
        (GroupRole::AdminChannelMember, _) => Err(GroupRefusal::AdminChannel(name)),
        (_, GroupAction::Invite { .. }) => Ok(()),
        (GroupRole::Owner, GroupAction::Rename { .. } | GroupAction::Delete) => Ok(()),
        (GroupRole::Member, GroupAction::Rename { .. } | GroupAction::Delete) => {
            Err(GroupRefusal::NotOwner(name))
        }
        (_, GroupAction::Create { .. }) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_manage_members_invite_everyone_may_leave() {
        let rename = GroupAction::Rename { title: "T".into() };
        let invite = GroupAction::Invite { user: "x".into() };
        assert_eq!(
            group_may(&GroupAction::Delete, GroupRole::Owner, "g"),
            Ok(())
        );
        assert_eq!(
            group_may(&GroupAction::Delete, GroupRole::Member, "g"),
            Err(GroupRefusal::NotOwner("g".into()))
        );
        assert_eq!(
            group_may(&rename, GroupRole::Member, "g"),
            Err(GroupRefusal::NotOwner("g".into()))
        );
        assert_eq!(group_may(&invite, GroupRole::Member, "g"), Ok(()));
        assert_eq!(
            group_may(&GroupAction::Leave, GroupRole::AdminChannelMember, "crew"),
            Ok(())
        );
        assert_eq!(
            group_may(&invite, GroupRole::AdminChannelMember, "crew"),
            Err(GroupRefusal::AdminChannel("crew".into()))
        );
        assert_eq!(
            group_may(&GroupAction::Leave, GroupRole::Outsider, "g"),
            Err(GroupRefusal::NotMember("g".into()))
        );
    }
}
