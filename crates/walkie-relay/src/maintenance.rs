//! Periodic relay chores: closing the sessions of users an admin removed or whose token an
//! admin replaced (the admin command runs in another process, so the relay polls the store
//! every second), deleting clips past the retention period, and expired invites.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use walkie_proto::wire::{ErrorCode, ErrorMsg};
use walkie_store::TokenHash;

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
            _ = revocation.tick() => revoke_stale(&shared).await,
            _ = retention.tick() => {
                expire(&shared).await;
                sweep_invites(&shared).await;
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Closes the sessions of users an admin removed, and of tokens an admin replaced: each
/// session is checked against its user's stored token hash.
async fn revoke_stale(shared: &Shared) {
    let sessions = shared.registry.all();
    if sessions.is_empty() {
        return;
    }
    let mut names: Vec<String> = sessions.iter().map(|s| s.user.clone()).collect();
    names.sort();
    names.dedup();
    let asked = names.clone();
    let hashes: HashMap<String, Option<TokenHash>> = match shared.store(move |s| s.token_hashes(&asked)).await {
        Ok(h) => names.into_iter().zip(h).collect(),
        Err(e) => {
            warn!("cannot check for removed users and replaced tokens: {e}");
            return;
        }
    };
    for s in &sessions {
        let message = match hashes.get(&s.user) {
            Some(Some(hash)) if *hash == s.credential => continue,
            Some(Some(_)) => "your token was replaced; sign in with the new one",
            _ => "your account was removed from this relay",
        };
        info!(user = %s.user, session = s.id, "{message}: closing the session");
        s.close(&ErrorMsg { req: None, clip: None, code: ErrorCode::Unauthorized, message: message.into() });
    }
}

/// Deletes invites past their expiry (until then a used one is kept, to say it was used).
async fn sweep_invites(shared: &Shared) {
    let now = walkie_proto::clip::now_ms();
    match shared.store(move |s| crate::people::sweep_invites(s, now)).await {
        Ok(0) => {}
        Ok(n) => info!(invites = n, "deleted expired invites"),
        Err(e) => warn!("sweeping expired invites failed: {e}"),
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
