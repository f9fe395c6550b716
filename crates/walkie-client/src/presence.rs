//! Who is online, as this connection has heard, and how presence reaches the application
//! without ever holding up the control stream: replies (a clip's `ClipStored`, a request's
//! answer) are read from the same stream, so a full event queue must not stop the reader.
//!
//! Presence changes become [`Event::Presence`] events while the queue has room. When it is
//! full they are folded into the view instead, and one [`Event::Online`] with the whole list
//! follows as soon as there is room again: an application that reads slowly (or a CLI
//! command that reads no events while a channel of thousands comes online) ends with the
//! right list and its replies on time.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::mpsc;

use crate::routing::Event;

#[derive(Debug, Default)]
struct View {
    online: BTreeSet<String>,
    /// Changes were folded in since the application last got a whole list.
    behind: bool,
    /// A task waits for room in the event queue to send the whole list.
    catching_up: bool,
}

/// The connection's presence view and its catch-up.
#[derive(Clone, Debug)]
pub(crate) struct Presence {
    view: Arc<Mutex<View>>,
    events: mpsc::Sender<Event>,
    me: String,
}

impl Presence {
    pub(crate) fn new(events: mpsc::Sender<Event>, me: String) -> Self {
        Presence {
            view: Arc::default(),
            events,
            me,
        }
    }

    fn lock(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The relay's whole list (after connecting, or when the user's channels changed).
    pub(crate) fn online(&self, users: Vec<String>) {
        let mut view = self.lock();
        view.online = users.iter().filter(|u| **u != self.me).cloned().collect();
        if view.behind || self.events.try_send(Event::Online(users)).is_err() {
            // The list waiting to be sent is this one now.
            self.fall_behind(view);
        }
    }

    /// A batch of changes (it may name us: skipped).
    pub(crate) fn changes(&self, online: Vec<String>, offline: Vec<String>) {
        let mut view = self.lock();
        let changes = online
            .into_iter()
            .map(|u| (u, true))
            .chain(offline.into_iter().map(|u| (u, false)));
        for (user, on) in changes.filter(|(u, _)| *u != self.me) {
            if on {
                view.online.insert(user.clone());
            } else {
                view.online.remove(&user);
            }
            if !view.behind && self.events.try_send(Event::Presence(user, on)).is_err() {
                view.behind = true;
            }
        }
        if view.behind {
            self.fall_behind(view);
        }
    }

    /// Marks the view as ahead of the application and, once, waits in the background for
    /// room to send the whole list.
    fn fall_behind(&self, mut view: MutexGuard<'_, View>) {
        view.behind = true;
        if std::mem::replace(&mut view.catching_up, true) {
            return;
        }
        drop(view);
        let me = self.clone();
        tokio::spawn(async move {
            let Ok(permit) = me.events.reserve().await else {
                return;
            };
            // Sent under the lock, so no change slips in between the list and its sending.
            let mut view = me.lock();
            view.behind = false;
            view.catching_up = false;
            permit.send(Event::Online(view.online.iter().cloned().collect()));
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn with_room_each_change_is_an_event_and_our_own_name_is_skipped() {
        let (tx, mut rx) = mpsc::channel(16);
        let p = Presence::new(tx, "me".into());
        p.online(names(&["bob"]));
        p.changes(names(&["me", "carol"]), names(&["bob"]));
        let got: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|e| format!("{e:?}"))
            .collect();
        assert_eq!(
            got,
            [
                "Online([\"bob\"])",
                "Presence(\"carol\", true)",
                "Presence(\"bob\", false)"
            ]
        );
    }

    #[tokio::test]
    async fn a_full_queue_never_blocks_and_a_whole_list_follows_when_there_is_room() {
        let (tx, mut rx) = mpsc::channel(2);
        let p = Presence::new(tx, "me".into());
        p.online(names(&["a"]));
        // 500 arrive and 2 leave while nobody reads: none of this may wait.
        let crowd: Vec<String> = (0..500).map(|i| format!("u{i:03}")).collect();
        p.changes(crowd.clone(), vec![]);
        p.changes(vec![], names(&["a", "u000"]));
        let mut last_list = None;
        let mut singles = Vec::new();
        while let Ok(Some(e)) =
            tokio::time::timeout(std::time::Duration::from_secs(2), rx.recv()).await
        {
            match e {
                Event::Online(list) => last_list = Some(list),
                Event::Presence(u, on) => singles.push((u, on)),
                other => panic!("unexpected {other:?}"),
            }
            if last_list
                .as_ref()
                .is_some_and(|l: &Vec<String>| l.len() == 499)
            {
                break;
            }
        }
        let list = last_list.expect("a whole list came");
        assert_eq!(list, crowd[1..].to_vec(), "everyone but a and u000, sorted");
        assert!(
            singles.len() <= 2,
            "only what fitted went out one by one: {singles:?}"
        );
        // Caught up: changes are single events again.
        p.changes(names(&["z"]), vec![]);
        let e = tokio::time::timeout(std::time::Duration::from_secs(2), rx.recv())
            .await
            .expect("in time")
            .expect("event");
        assert!(
            matches!(e, Event::Presence(ref u, true) if u == "z"),
            "{e:?}"
        );
    }
}
