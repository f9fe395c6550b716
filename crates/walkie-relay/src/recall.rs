//! Recalling a message or clip: only its sender, only within the relay's recall window
//! (`recall_window_secs`, 2 minutes by default), and only what they may still read. The
//! payload is erased from the store and the item is queued again for every recipient, so
//! each of their clients replaces it with "message recalled", online now or when they come
//! back.

use std::time::Instant;

use tracing::info;
use walkie_proto::clip::{ClipId, Target, now_ms};
use walkie_proto::message::Content;
use walkie_proto::upload::not_readable;
use walkie_proto::wire::{ErrorCode, ErrorMsg, ReqId, ServerMsg};

use crate::access::may_read;
use crate::registry::Session;
use crate::shared::{Shared, lock};

/// Answers one recall request of `session`.
pub(crate) async fn recall(
    shared: &Shared,
    session: &Session,
    req: ReqId,
    id: ClipId,
) -> ServerMsg {
    let fail = |code: ErrorCode, message: String| {
        ServerMsg::Error(ErrorMsg {
            req: Some(req),
            clip: Some(id),
            code,
            message,
        })
    };
    let user = &session.user;
    // Recalls cost a store write or two: they share the people requests' budget.
    if let Err(wait) = lock(&shared.people_limits).admit(user.clone(), Instant::now()) {
        let ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1);
        return fail(
            ErrorCode::Busy { retry_after_ms: ms },
            format!("too many requests; retry after {ms} ms"),
        );
    }
    let meta = match shared.store(move |s| s.clip(&id)).await {
        Ok(Some(meta)) => meta,
        Ok(None) => return fail(ErrorCode::NotFound, not_readable(id).message),
        Err(e) => return fail(ErrorCode::Storage, e.to_string()),
    };
    // Someone who may not read it learns nothing more than from a fetch.
    if !may_read(shared, user, &meta).await {
        return fail(ErrorCode::NotFound, not_readable(id).message);
    }
    if meta.from != *user {
        return fail(
            ErrorCode::Forbidden,
            "only its sender may recall a message".into(),
        );
    }
    if meta.content == Content::Recalled {
        return ServerMsg::Recalled { req, id };
    }
    let window = shared.config.recall_window;
    let age_ms = now_ms().saturating_sub(meta.started_at_ms).max(0) as u64;
    if age_ms > window.as_millis() as u64 {
        return fail(
            ErrorCode::Forbidden,
            format!(
                "a message can be recalled within {} s of sending; this one was sent {} s ago",
                window.as_secs(),
                age_ms / 1000
            ),
        );
    }
    let (to, sender) = (meta.to.clone(), user.clone());
    let recipients = match shared
        .store(move |s| {
            Ok(match &to {
                Target::Channel(c) => s.members(c)?.unwrap_or_default(),
                Target::User(u) => vec![u.clone()],
            })
        })
        .await
    {
        Ok(list) => list
            .into_iter()
            .filter(|m| *m != sender)
            .collect::<Vec<_>>(),
        Err(e) => return fail(ErrorCode::Storage, e.to_string()),
    };
    let keys = match shared.delivery_keys(&recipients).await {
        Ok(keys) => keys,
        Err(e) => return fail(ErrorCode::Storage, e.to_string()),
    };
    match shared.store(move |s| s.recall_clip(&id, &keys)).await {
        Ok(Some(_)) => {
            info!(message = %id, from = %user, to = %meta.to, kind = meta.content.name(), "message recalled");
            shared.wake_everywhere(&recipients);
            ServerMsg::Recalled { req, id }
        }
        Ok(None) => fail(ErrorCode::NotFound, not_readable(id).message),
        Err(e) => fail(ErrorCode::Storage, e.to_string()),
    }
}
