//! Presence at this relay, driving [`walkie_proto::presence::Presence`]: a session's first
//! messages (its channels and who is online among the people it sees), a guard that takes the
//! session out again, the batches every [`FLUSH_EVERY`] to the watchers here and to the other
//! relays, and the refresh of a user's watch when their channels or contacts change.
//!
//! A session opening reads only its own user's channels and contacts (no channel's member
//! list) and sends one list; everyone else hears of it in the next batch. So the cost of a
//! connect does not grow with the size of the user's channels, beyond the list itself.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tracing::debug;
use walkie_proto::people::ContactState;
use walkie_proto::presence::{Change, Watch};
use walkie_proto::wire::{MAX_CONTROL_FRAME, ServerMsg, encode_frame};

use crate::cluster::Notice;
use crate::people;
use crate::shared::{Shared, lock};

/// How often changes are told (the issue of a rush: at most one message per channel per this).
pub(crate) const FLUSH_EVERY: Duration = Duration::from_millis(250);
/// Names in one presence message at most (a control frame stays far below its cap).
pub(crate) const MAX_NAMES: usize = 1_000;
/// Changes in one notice to the other relays at most.
const MAX_CHANGES_PER_NOTICE: usize = 200;

/// What the store says `user` watches: their channels and their contacts.
pub(crate) async fn watch_of(shared: &Shared, user: &str) -> Watch {
    let me = user.to_string();
    let found = shared
        .store(move |s| {
            let contacts = people::person(s, &me)?
                .contacts
                .into_iter()
                .filter(|(_, st)| *st == ContactState::Contact)
                .map(|(n, _)| n);
            Ok(Watch {
                channels: s.channels_of(&me)?,
                contacts: contacts.collect(),
            })
        })
        .await;
    match found {
        Ok(watch) => watch,
        Err(e) => {
            debug!(%user, "cannot read channels and contacts: {e}");
            Watch::default()
        }
    }
}

/// `users` online, as messages: the first [`MAX_NAMES`] as the session's `Online` list, the
/// rest as presence changes.
pub(crate) fn online_messages(users: Vec<String>) -> Vec<ServerMsg> {
    let mut chunks = users.chunks(MAX_NAMES);
    let mut out = vec![ServerMsg::Online {
        users: chunks.next().map(<[String]>::to_vec).unwrap_or_default(),
    }];
    out.extend(chunks.map(|c| ServerMsg::Presence {
        online: c.to_vec(),
        offline: vec![],
    }));
    out
}

/// Keeps a session's user online in the presence state; takes them out when dropped.
pub(crate) struct Here<'a> {
    shared: &'a Shared,
    user: String,
}

impl<'a> Here<'a> {
    /// Puts a session of `user` in; returns the first messages it gets (its channels and who
    /// is online).
    pub fn arrive(shared: &'a Shared, user: &str, watch: Watch) -> (Self, Vec<ServerMsg>) {
        let channels = watch.channels.clone();
        let online = lock(&shared.presence).arrive(user, watch);
        let mut first = vec![ServerMsg::Channels { channels }];
        first.extend(online_messages(online));
        (
            Here {
                shared,
                user: user.to_string(),
            },
            first,
        )
    }
}

impl Drop for Here<'_> {
    fn drop(&mut self) {
        lock(&self.shared.presence).leave(&self.user);
    }
}

/// Tells the changes since the last flush, every [`FLUSH_EVERY`], until the relay stops.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    let mut every = tokio::time::interval(FLUSH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => flush(&shared),
            _ = shutdown.changed() => return,
        }
    }
}

/// Tells the pending changes here and publishes them to the other relays.
fn flush(shared: &Shared) {
    let changes = lock(&shared.presence).take();
    if changes.is_empty() {
        return;
    }
    if shared.cluster.spans_relays() {
        for chunk in changes.chunks(MAX_CHANGES_PER_NOTICE) {
            shared.cluster.publish(Notice::Presence {
                changes: chunk.to_vec(),
            });
        }
    }
    tell_here(shared, &changes);
}

/// Sends `changes` (this relay's or another's) to the sessions here that may see them; each
/// message is encoded once for all its recipients.
pub(crate) fn tell_here(shared: &Shared, changes: &[Change]) {
    let tells = lock(&shared.presence).tells(changes);
    for tell in tells {
        let (mut online, mut offline) = (
            tell.online.chunks(MAX_NAMES),
            tell.offline.chunks(MAX_NAMES),
        );
        loop {
            let (on, off) = (online.next(), offline.next());
            if on.is_none() && off.is_none() {
                break;
            }
            let msg = ServerMsg::Presence {
                online: on.map(<[String]>::to_vec).unwrap_or_default(),
                offline: off.map(<[String]>::to_vec).unwrap_or_default(),
            };
            match encode_frame(&msg, MAX_CONTROL_FRAME) {
                Ok(frame) => shared.registry.tell_frame(&tell.to, &Bytes::from(frame)),
                Err(e) => debug!("cannot encode a presence batch: {e}"),
            }
        }
    }
}

/// `user`'s channels are now `channels` (they were added, removed, or a channel went): if
/// they are online here, they move, hear who is online among their new channel mates, and
/// those hear of them at the next flush.
pub(crate) fn channels_changed(shared: &Shared, user: &str, channels: Vec<String>) {
    let mut presence = lock(&shared.presence);
    let Some(mut watch) = presence.watch_of(user).cloned() else {
        return;
    };
    watch.channels = channels;
    let online = presence.rewatch(user, watch);
    drop(presence);
    tell_new_list(shared, user, online);
}

/// `users`' contacts changed: each of them online here gets their watch read again.
pub(crate) async fn contacts_changed(shared: &Shared, users: &[String]) {
    for user in users {
        if !lock(&shared.presence).is_online(user) {
            continue;
        }
        let watch = watch_of(shared, user).await;
        let online = lock(&shared.presence).rewatch(user, watch);
        tell_new_list(shared, user, online);
    }
}

/// Sends `user` who they now see (what [`Presence::rewatch`] returned: nothing when they are
/// not online here).
///
/// [`Presence::rewatch`]: walkie_proto::presence::Presence::rewatch
fn tell_new_list(shared: &Shared, user: &str, online: Option<Vec<String>>) {
    let to = [user.to_string()];
    for msg in online.map(online_messages).into_iter().flatten() {
        shared.registry.tell(&to, &msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_online_list_is_cut_into_messages_the_client_adds_up() {
        let users: Vec<String> = (0..2_500).map(|i| format!("u{i:04}")).collect();
        let msgs = online_messages(users.clone());
        assert_eq!(msgs.len(), 3);
        let mut back = Vec::new();
        for m in msgs {
            match m {
                ServerMsg::Online { users } => back.extend(users),
                ServerMsg::Presence { online, offline } => {
                    assert!(offline.is_empty());
                    back.extend(online);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(back, users);
        assert_eq!(
            online_messages(vec![]),
            vec![ServerMsg::Online { users: vec![] }]
        );
    }
}
