//! Periodic relay chores: closing the sessions of users an admin removed, of devices their
//! owner removed, or whose token an admin replaced (the admin command runs in another process, so the relay polls the store
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
/// How often people nearby past their hour are forgotten (lists skip them before that).
const NEARBY_EVERY: Duration = Duration::from_secs(60);

pub(crate) async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut revocation = tokio::time::interval(REVOCATION_EVERY);
    let mut retention = tokio::time::interval(RETENTION_EVERY);
    let mut nearby = tokio::time::interval(NEARBY_EVERY);
    loop {
        tokio::select! {
            _ = revocation.tick() => revoke_stale(&shared).await,
            _ = retention.tick() => expire(&shared).await,
            _ = nearby.tick() => sweep_people(&shared).await,
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
    let mut with_devices: Vec<String> = sessions
        .iter()
        .filter(|s| s.device.is_some())
        .map(|s| s.user.clone())
        .collect();
    with_devices.dedup();
    let asked = names.clone();
    let read = shared
        .store(move |s| {
            let hashes = s.token_hashes(&asked)?;
            let devices = with_devices
                .iter()
                .map(|u| crate::people::devices(s, u))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((
                hashes,
                with_devices
                    .into_iter()
                    .zip(devices)
                    .collect::<HashMap<_, _>>(),
            ))
        })
        .await;
    let (hashes, devices): (HashMap<String, Option<TokenHash>>, _) = match read {
        Ok((h, d)) => (names.into_iter().zip(h).collect(), d),
        Err(e) => {
            warn!("cannot check for removed users, devices and replaced tokens: {e}");
            return;
        }
    };
    for s in &sessions {
        let device_hash = |id: &str| {
            devices.get(&s.user).and_then(|d| d.get(id)).and_then(|d| {
                let mut hash = [0u8; 32];
                hex::decode_to_slice(&d.token_hash, &mut hash)
                    .ok()
                    .map(|()| hash)
            })
        };
        let message = match (hashes.get(&s.user), &s.device) {
            (Some(Some(hash)), None) if *hash == s.credential => continue,
            (Some(Some(_)), None) => "your token was replaced; sign in with the new one",
            (Some(Some(_)), Some(id)) if device_hash(id) == Some(s.credential) => continue,
            (Some(Some(_)), Some(_)) => "this device was removed from your account",
            _ => "your account was removed from this relay",
        };
        info!(user = %s.user, session = s.id, "{message}: closing the session");
        s.close(&ErrorMsg {
            req: None,
            clip: None,
            code: ErrorCode::Unauthorized,
            message: message.into(),
        });
    }
}

/// Deletes invites past their expiry (until then a used one is kept, to say it was used),
/// and people nearby past their hour.
async fn sweep_people(shared: &Shared) {
    let now = walkie_proto::clip::now_ms();
    match shared
        .store(move |s| crate::people::sweep_invites(s, now))
        .await
    {
        Ok(0) => {}
        Ok(n) => info!(invites = n, "deleted expired invites"),
        Err(e) => warn!("sweeping expired invites failed: {e}"),
    }
    match shared
        .store(move |s| crate::people::sweep_nearby(s, now))
        .await
    {
        Ok(0) => {}
        Ok(n) => info!(entries = n, "forgot people nearby whose hour was up"),
        Err(e) => warn!("sweeping people nearby failed: {e}"),
    }
}

async fn expire(shared: &Shared) {
    let Some(keep) = shared.config.retention else {
        return;
    };
    let Ok(keep_ms) = i64::try_from(keep.as_millis()) else {
        return;
    };
    let before = walkie_proto::clip::now_ms().saturating_sub(keep_ms);
    match shared.store(move |s| s.delete_clips_before(before)).await {
        Ok(0) => {}
        Ok(n) => info!(clips = n, "deleted clips past the retention period"),
        Err(e) => warn!("retention failed: {e}"),
    }
}
