//! Periodic relay chores: closing the sessions of users an admin removed (the admin command
//! runs in another process, so the relay polls the store), and deleting clips past the
//! retention period.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use walkie_proto::wire::{ErrorCode, ErrorMsg};

use crate::shared::Shared;

/// How often removed users are looked for.
const REVOCATION_EVERY: Duration = Duration::from_secs(1);
/// How often old clips are deleted when a retention period is set.
const RETENTION_EVERY: Duration = Duration::from_secs(600);

pub(crate) async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut revocation = tokio::time::interval(REVOCATION_EVERY);
    let mut retention = tokio::time::interval(RETENTION_EVERY);
    loop {
        tokio::select! {
            _ = revocation.tick() => revoke_removed(&shared).await,
            _ = retention.tick() => expire(&shared).await,
            _ = shutdown.changed() => return,
        }
    }
}

async fn revoke_removed(shared: &Shared) {
    let sessions = shared.registry.all();
    if sessions.is_empty() {
        return;
    }
    let users: HashSet<String> = match shared.store(|s| s.users()).await {
        Ok(u) => u.into_iter().collect(),
        Err(e) => {
            warn!("cannot check for removed users: {e}");
            return;
        }
    };
    for s in sessions.iter().filter(|s| !users.contains(&s.user)) {
        info!(user = %s.user, "user removed: closing their session");
        s.close(&ErrorMsg {
            req: None,
            clip: None,
            code: ErrorCode::Unauthorized,
            message: "your account was removed from this relay".into(),
        });
    }
}

async fn expire(shared: &Shared) {
    let Some(keep) = shared.config.retention else { return };
    let Ok(keep_ms) = i64::try_from(keep.as_millis()) else { return };
    let before = walkie_proto::clip::now_ms().saturating_sub(keep_ms);
    match shared.store(move |s| s.delete_clips_before(before)).await {
        Ok(0) => {}
        Ok(n) => info!(clips = n, "deleted clips past the retention period"),
        Err(e) => warn!("retention failed: {e}"),
    }
}
