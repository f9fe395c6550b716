//! Who is online at one relay, as the people allowed to see it: each online user's channels
//! and contacts (their [`Watch`]), each channel's online members, and the changes not told yet.
//!
//! Changes are told in batches: the relay calls [`Presence::take`] every few hundred
//! milliseconds and sends what [`Presence::tells`] makes of it. A channel of N members coming
//! online together then costs each member one message per batch, each naming everyone who
//! came or went since the last one, instead of one message per member (N² in all). The sets a
//! new session's list is read from are updated at once; only the telling waits.
//!
//! A user is online while they have at least one session here: sessions are counted, so a
//! second device arriving, or one of two leaving, changes nothing. A batch tells each user's
//! state at its end: one who came and went within it is told as offline, since a session that
//! opened meanwhile was given a list naming them.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// Who sees a user's presence: the members of their channels and their contacts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    /// The channels the user is a member of.
    pub channels: Vec<String>,
    /// The user's contacts (accepted both ways).
    pub contacts: Vec<String>,
}

/// A user who came online or went offline, with who sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The user.
    pub user: String,
    /// True when they came online.
    pub online: bool,
    /// Their channels and contacts when it happened.
    pub watch: Watch,
}

/// One message to send: these users' sessions hear who came online and who went offline.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tell {
    /// The recipients.
    pub to: Vec<String>,
    /// Came online.
    pub online: Vec<String>,
    /// Went offline.
    pub offline: Vec<String>,
}

#[derive(Debug)]
struct Here {
    sessions: usize,
    watch: Watch,
}

/// A user whose state is to be told: their watch when they left (an offline change is told
/// to these people; an online one to those of their watch now).
#[derive(Debug, Default)]
struct Pending {
    watch: Watch,
}

/// Presence at one relay; see the module documentation.
#[derive(Debug, Default)]
pub struct Presence {
    here: HashMap<String, Here>,
    /// Online members of each channel, sorted (lists are read from them as they are).
    members: HashMap<String, BTreeSet<String>>,
    pending: HashMap<String, Pending>,
}

impl Presence {
    /// A session of `user` opened; `watch` is what the store says now. Returns who, among the
    /// people `user` sees, is online here (sorted, without `user`).
    pub fn arrive(&mut self, user: &str, watch: Watch) -> Vec<String> {
        let list = self.online_for(user, &watch);
        match self.here.get_mut(user) {
            Some(here) => {
                here.sessions += 1;
                self.set_watch(user, watch);
            }
            None => {
                for channel in &watch.channels {
                    self.members
                        .entry(channel.clone())
                        .or_default()
                        .insert(user.to_string());
                }
                self.here
                    .insert(user.to_string(), Here { sessions: 1, watch });
                self.pending.entry(user.to_string()).or_default();
            }
        }
        list
    }

    /// A session of `user` closed (each [`Presence::arrive`] is matched by one of these).
    pub fn leave(&mut self, user: &str) {
        let Some(here) = self.here.get_mut(user) else {
            return;
        };
        here.sessions -= 1;
        if here.sessions > 0 {
            return;
        }
        let Some(here) = self.here.remove(user) else {
            return;
        };
        for channel in &here.watch.channels {
            self.forget_member(channel, user);
        }
        self.pending.entry(user.to_string()).or_default().watch = here.watch;
    }

    /// `user`'s channels or contacts changed: if they are online here, their watch becomes
    /// `watch`, everyone who now sees them hears they are online at the next batch, and the
    /// list of who they now see is returned.
    pub fn rewatch(&mut self, user: &str, watch: Watch) -> Option<Vec<String>> {
        self.here.get(user)?;
        let list = self.online_for(user, &watch);
        self.set_watch(user, watch);
        self.pending.entry(user.to_string()).or_default();
        Some(list)
    }

    /// `user`'s watch while online, if they are.
    pub fn watch_of(&self, user: &str) -> Option<&Watch> {
        self.here.get(user).map(|h| &h.watch)
    }

    /// Whether `user` has a session here.
    pub fn is_online(&self, user: &str) -> bool {
        self.here.contains_key(user)
    }

    /// Users online here.
    pub fn len(&self) -> usize {
        self.here.len()
    }

    /// True when nobody is online here.
    pub fn is_empty(&self) -> bool {
        self.here.is_empty()
    }

    /// Who among the people `watch` names is online here, sorted, without `user`.
    pub fn online_for(&self, user: &str, watch: &Watch) -> Vec<String> {
        if let ([one], true) = (watch.channels.as_slice(), watch.contacts.is_empty()) {
            // The common case (one big channel): one sorted set, copied as it is.
            return self
                .members
                .get(one)
                .into_iter()
                .flatten()
                .filter(|m| *m != user)
                .cloned()
                .collect();
        }
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for channel in &watch.channels {
            seen.extend(
                self.members
                    .get(channel)
                    .into_iter()
                    .flatten()
                    .map(String::as_str),
            );
        }
        seen.extend(
            watch
                .contacts
                .iter()
                .map(String::as_str)
                .filter(|c| self.here.contains_key(*c)),
        );
        seen.remove(user);
        seen.into_iter().map(str::to_string).collect()
    }

    /// The changes since the last call, each as the user's state now: users who came or went
    /// (a second session arriving or one of two leaving is no change), and users whose
    /// channels changed (as online). Sorted by user.
    pub fn take(&mut self) -> Vec<Change> {
        let mut out: Vec<Change> = Vec::new();
        for (user, pending) in self.pending.drain() {
            let change = match self.here.get(&user) {
                Some(here) => Change {
                    watch: here.watch.clone(),
                    user,
                    online: true,
                },
                None => Change {
                    user,
                    online: false,
                    watch: pending.watch,
                },
            };
            out.push(change);
        }
        out.sort_by(|a, b| a.user.cmp(&b.user));
        out
    }

    /// What to send for `changes` (from this relay's [`Presence::take`] or another relay's):
    /// one message per channel to its members online here, and one per change to the changed
    /// user's contacts online here. A recipient may be named in a message's own lists (a
    /// member who came online hears of themselves); clients skip their own name.
    pub fn tells(&self, changes: &[Change]) -> Vec<Tell> {
        let mut by_channel: BTreeMap<&str, (Vec<String>, Vec<String>)> = BTreeMap::new();
        let mut out = Vec::new();
        for change in changes {
            for channel in &change.watch.channels {
                let (on, off) = by_channel.entry(channel).or_default();
                if change.online { on } else { off }.push(change.user.clone());
            }
            let to: Vec<String> = change
                .watch
                .contacts
                .iter()
                .filter(|c| self.here.contains_key(*c))
                .cloned()
                .collect();
            if !to.is_empty() {
                let (online, offline) = if change.online {
                    (vec![change.user.clone()], vec![])
                } else {
                    (vec![], vec![change.user.clone()])
                };
                out.push(Tell {
                    to,
                    online,
                    offline,
                });
            }
        }
        for (channel, (online, offline)) in by_channel {
            let Some(members) = self.members.get(channel) else {
                continue;
            };
            out.push(Tell {
                to: members.iter().cloned().collect(),
                online,
                offline,
            });
        }
        out
    }

    fn set_watch(&mut self, user: &str, watch: Watch) {
        let Some(here) = self.here.get_mut(user) else {
            return;
        };
        let old = std::mem::replace(&mut here.watch, watch);
        let new: HashSet<&String> = here.watch.channels.iter().collect();
        let gone: Vec<String> = old
            .channels
            .iter()
            .filter(|c| !new.contains(c))
            .cloned()
            .collect();
        let added: Vec<String> = here.watch.channels.clone();
        for channel in gone {
            self.forget_member(&channel, user);
        }
        for channel in added {
            self.members
                .entry(channel)
                .or_default()
                .insert(user.to_string());
        }
    }

    fn forget_member(&mut self, channel: &str, user: &str) {
        if let Some(set) = self.members.get_mut(channel) {
            set.remove(user);
            if set.is_empty() {
                self.members.remove(channel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch(channels: &[&str], contacts: &[&str]) -> Watch {
        Watch {
            channels: channels.iter().map(|s| s.to_string()).collect(),
            contacts: contacts.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_new_session_sees_who_is_online_among_its_channels_and_contacts() {
        let mut p = Presence::default();
        assert!(p.arrive("bob", watch(&["ops"], &[])).is_empty());
        p.arrive("carol", watch(&["dev"], &["alice"]));
        p.arrive("dave", watch(&["other"], &[]));
        let list = p.arrive("alice", watch(&["ops", "dev"], &["carol"]));
        assert_eq!(
            list,
            names(&["bob", "carol"]),
            "not dave (no shared channel), not alice herself"
        );
        assert_eq!(p.len(), 4);
    }

    #[test]
    fn many_arrivals_become_one_message_per_channel() {
        let mut p = Presence::default();
        for i in 0..100 {
            p.arrive(&format!("u{i:03}"), watch(&["big"], &[]));
        }
        let changes = p.take();
        assert_eq!(changes.len(), 100);
        let tells = p.tells(&changes);
        assert_eq!(tells.len(), 1, "one message for the whole channel");
        assert_eq!(tells[0].to.len(), 100);
        assert_eq!(tells[0].online.len(), 100);
        assert!(tells[0].offline.is_empty());
        assert!(p.take().is_empty(), "told once");
    }

    #[test]
    fn a_batch_tells_the_state_at_its_end() {
        let mut p = Presence::default();
        p.arrive("bob", watch(&["ops"], &[]));
        p.take();
        let alice_list = p.arrive("alice", watch(&["ops"], &[]));
        assert!(alice_list.contains(&"bob".to_string()));
        // Carol arrives while alice is here and is given a list naming her; alice then goes
        // before the batch: everyone must hear she is offline.
        let list = p.arrive("carol", watch(&["ops"], &[]));
        assert_eq!(list, names(&["alice", "bob"]));
        p.leave("alice");
        let changes = p.take();
        let told: Vec<(&str, bool)> = changes
            .iter()
            .map(|c| (c.user.as_str(), c.online))
            .collect();
        assert_eq!(told, [("alice", false), ("carol", true)]);
        // Going and coming back within a batch is told as online.
        p.leave("bob");
        p.arrive("bob", watch(&["ops"], &[]));
        let told: Vec<(String, bool)> = p.take().into_iter().map(|c| (c.user, c.online)).collect();
        assert_eq!(told, [("bob".to_string(), true)]);
    }

    #[test]
    fn sessions_are_counted_and_the_last_one_takes_the_user_offline() {
        let mut p = Presence::default();
        p.arrive("carol", watch(&["ops"], &[]));
        p.arrive("alice", watch(&["ops"], &[]));
        p.arrive("alice", watch(&["ops"], &[]));
        p.take();
        p.leave("alice");
        assert!(p.take().is_empty(), "one session left");
        assert!(p.is_online("alice"));
        p.leave("alice");
        let changes = p.take();
        assert_eq!(
            changes,
            vec![Change {
                user: "alice".into(),
                online: false,
                watch: watch(&["ops"], &[])
            }]
        );
        let tells = p.tells(&changes);
        assert_eq!(
            tells,
            vec![Tell {
                to: names(&["carol"]),
                online: vec![],
                offline: names(&["alice"])
            }]
        );
        p.leave("alice");
        assert!(p.take().is_empty(), "a stray leave changes nothing");
    }

    #[test]
    fn contacts_hear_of_each_other_without_a_channel() {
        let mut p = Presence::default();
        p.arrive("bob", watch(&[], &["alice"]));
        p.take();
        p.arrive("alice", watch(&[], &["bob", "zed"]));
        let changes = p.take();
        let tells = p.tells(&changes);
        assert_eq!(
            tells,
            vec![Tell {
                to: names(&["bob"]),
                online: names(&["alice"]),
                offline: vec![]
            }],
            "zed is not online"
        );
    }

    #[test]
    fn a_changed_channel_list_moves_the_user_and_announces_them() {
        let mut p = Presence::default();
        p.arrive("bob", watch(&["new"], &[]));
        p.arrive("alice", watch(&["old"], &[]));
        p.arrive("carol", watch(&["old"], &[]));
        p.take();
        let list = p.rewatch("alice", watch(&["new"], &[])).expect("online");
        assert_eq!(list, names(&["bob"]));
        assert_eq!(
            p.online_for("carol", &watch(&["old"], &[])),
            Vec::<String>::new(),
            "alice left old"
        );
        let changes = p.take();
        let tells = p.tells(&changes);
        assert_eq!(
            tells,
            vec![Tell {
                to: names(&["alice", "bob"]),
                online: names(&["alice"]),
                offline: vec![]
            }]
        );
        assert_eq!(p.rewatch("nobody", Watch::default()), None);
    }

    #[test]
    fn another_relays_changes_reach_only_the_watchers_here() {
        let mut p = Presence::default();
        p.arrive("bob", watch(&["ops"], &[]));
        p.take();
        let remote = vec![
            Change {
                user: "eve".into(),
                online: true,
                watch: watch(&["ops", "elsewhere"], &["bob"]),
            },
            Change {
                user: "fay".into(),
                online: false,
                watch: watch(&["elsewhere"], &[]),
            },
        ];
        let tells = p.tells(&remote);
        assert_eq!(
            tells,
            vec![
                Tell {
                    to: names(&["bob"]),
                    online: names(&["eve"]),
                    offline: vec![]
                },
                Tell {
                    to: names(&["bob"]),
                    online: names(&["eve"]),
                    offline: vec![]
                },
            ],
            "once as a contact, once as a member; nothing for a channel nobody here is in"
        );
    }
}
