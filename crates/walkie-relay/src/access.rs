//! Who may read or send where, and who receives a clip: the relay's authorization rules, one
//! place for every request. A user may send to and read a channel they are a member of now,
//! send to any existing user, and read the direct clips they sent or received. A user who may
//! not read a clip learns no more than that it does not exist. Who takes direct clips from
//! whom, and blocks, are the people records' ([`crate::people`]).

use walkie_proto::assemble::Refusal;
use walkie_proto::clip::{ClipMeta, Target};
use walkie_proto::wire::ErrorCode;

use crate::people;
use crate::shared::Shared;

/// Whether `user` may read or write `target`: members for a channel, anyone for an existing
/// user; otherwise the refusal to report.
pub(crate) async fn may_access(
    shared: &Shared,
    user: &str,
    target: &Target,
) -> Result<(), Refusal> {
    let result = match target {
        Target::Channel(name) => {
            let name = name.clone();
            shared
                .store(move |s| s.members(&name))
                .await
                .map(|m| m.map(|m| m.iter().any(|u| u == user)))
        }
        Target::User(name) => {
            let name = name.clone();
            shared
                .store(move |s| s.token_hash(&name))
                .await
                .map(|h| h.map(|_| true))
        }
    };
    match result {
        Ok(Some(true)) => Ok(()),
        Ok(Some(false)) => Err(not_member(target)),
        Ok(None) if matches!(target, Target::Channel(_)) => Err(not_member(target)),
        Ok(None) => Err(Refusal::new(
            ErrorCode::NotFound,
            format!("there is no user {target}"),
        )),
        Err(e) => Err(Refusal::new(ErrorCode::Storage, e.to_string())),
    }
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
/// tell); a channel clip reaches every member but those who blocked the sender.
pub(crate) async fn recipients(
    shared: &Shared,
    sender: &str,
    to: &Target,
) -> Result<Vec<String>, Refusal> {
    let storage = |e: crate::RelayError| Refusal::new(ErrorCode::Storage, e.to_string());
    let (from, default) = (sender.to_string(), shared.config.direct_from);
    let members = match to {
        Target::User(name) => {
            may_access(shared, sender, to).await?;
            let recipient = name.clone();
            if !shared
                .store(move |s| people::may_send_direct(s, &from, &recipient, default))
                .await
                .map_err(storage)?
            {
                return Err(Refusal::new(
                    ErrorCode::Forbidden,
                    format!("{to} takes direct clips from their contacts only"),
                ));
            }
            vec![name.clone()]
        }
        Target::Channel(name) => {
            // One trip to the store: the members (who may send, and who receives) and blocks.
            let name = name.clone();
            let (members, blockers) = shared
                .store(move |s| Ok((s.members(&name)?, people::blocked_by(s, &from)?)))
                .await
                .map_err(storage)?;
            let members = members
                .filter(|m| m.iter().any(|u| u == sender))
                .ok_or_else(|| not_member(to))?;
            members
                .into_iter()
                .filter(|m| !blockers.contains(m))
                .collect()
        }
    };
    Ok(members.into_iter().filter(|m| m != sender).collect())
}
