//! Who may read or send where, and who receives a clip: the relay's authorization rules, one
//! place for every request. A user may send to and read a channel they are a member of now,
//! send to any existing user, and read the direct clips they sent or received. A user who may
//! not read a clip learns no more than that it does not exist. Who takes direct clips from
//! whom, and blocks, are the people records' ([`crate::people`]).

use walkie_proto::assemble::Refusal;
use walkie_proto::clip::{ClipMeta, Target};
use walkie_proto::wire::ErrorCode;

use walkie_proto::people::DirectFrom;
use walkie_store::{Store, StoreError};

use crate::people;
use crate::shared::Shared;

/// Whether `user` may read or write `target`: members for a channel, anyone for an existing
/// user; otherwise the refusal to report.
pub(crate) async fn may_access(
    shared: &Shared,
    user: &str,
    target: &Target,
) -> Result<(), Refusal> {
    let (user, target) = (user.to_string(), target.clone());
    shared
        .store(move |s| may_access_in(s, &user, &target))
        .await
        .map_err(storage)?
}

/// [`may_access`] inside a store trip: the store's error, or the rule's answer.
fn may_access_in(s: &dyn Store, user: &str, target: &Target) -> Result<Allowed, StoreError> {
    Ok(match target {
        Target::Channel(name) => match s.members(name)? {
            Some(m) if m.iter().any(|u| u == user) => Ok(()),
            _ => Err(not_member(target)),
        },
        Target::User(name) => match s.token_hash(name)? {
            Some(_) => Ok(()),
            None => Err(Refusal::new(
                ErrorCode::NotFound,
                format!("there is no user {target}"),
            )),
        },
    })
}

/// A rule's answer: allowed, or the refusal to report.
type Allowed = Result<(), Refusal>;

/// A store failure, as the refusal a client is told.
pub(crate) fn storage(e: crate::RelayError) -> Refusal {
    Refusal::new(ErrorCode::Storage, e.to_string())
}

/// A non-member learns no more than that it may not use the channel, whether or not it exists.
fn not_member(target: &Target) -> Refusal {
    Refusal::new(
        ErrorCode::Forbidden,
        format!("you are not a member of channel {target}"),
    )
}

/// A user may read a channel clip if they are a member now, and a direct clip they sent or received.
pub(crate) async fn may_read(shared: &Shared, user: &str, meta: &ClipMeta) -> bool {
    match &meta.to {
        Target::User(to) => meta.from == user || to == user,
        t @ Target::Channel(_) => may_access(shared, user, t).await.is_ok(),
    }
}

/// Who gets a clip `sender` sends to `to` (the sender left out), once `sender` may send there:
/// a direct clip only if its recipient takes direct clips from the sender (their choice, and
/// never from someone they blocked: both refused in the same words, so a blocked sender cannot
/// tell); a channel clip reaches every member but those who blocked the sender. Runs inside a
/// store trip (the caller's, so that one trip answers everything a send asks): the store's
/// error, or the rule's answer.
pub(crate) fn recipients_in(
    s: &dyn Store,
    sender: &str,
    to: &Target,
    default: DirectFrom,
) -> Result<Result<Vec<String>, Refusal>, StoreError> {
    let members = match to {
        Target::User(name) => {
            if let Err(refusal) = may_access_in(s, sender, to)? {
                return Ok(Err(refusal));
            }
            if !people::may_send_direct(s, sender, name, default)? {
                return Ok(Err(Refusal::new(
                    ErrorCode::Forbidden,
                    format!("{to} takes direct clips from their contacts only"),
                )));
            }
            vec![name.clone()]
        }
        Target::Channel(name) => {
            // The members (who may send, and who receives) and blocks.
            let Some(members) = s.members(name)?.filter(|m| m.iter().any(|u| u == sender)) else {
                return Ok(Err(not_member(to)));
            };
            let blockers = people::blocked_by(s, sender)?;
            members
                .into_iter()
                .filter(|m| !blockers.contains(m))
                .collect()
        }
    };
    Ok(Ok(members.into_iter().filter(|m| m != sender).collect()))
}
