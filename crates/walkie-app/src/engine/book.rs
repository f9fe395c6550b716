//! The conversation list as pure data: which conversation a clip or message belongs to, items
//! kept in the relay's order without duplicates, played (read) marks and unread counts,
//! message bodies and recalls, presence, receipts.

use super::state::{Body, ClipView, Conversation};
use walkie_proto::clip::{ClipId, ClipMeta, Target};
use walkie_proto::message::Content;

/// The conversation a clip belongs to, seen from `me`: its channel, or the other user.
pub fn conversation_of(to: &Target, from: &str, me: &str) -> Target {
    match to {
        Target::User(u) if u == me => Target::User(from.to_string()),
        t => t.clone(),
    }
}

/// Channels first, then contacts, each by name.
fn order(t: &Target) -> (u8, String) {
    match t {
        Target::Channel(c) => (0, c.clone()),
        Target::User(u) => (1, u.clone()),
    }
}

/// The conversation for `target`, added to the list if new.
pub fn ensure<'a>(convs: &'a mut Vec<Conversation>, target: &Target) -> &'a mut Conversation {
    let i = match convs.iter().position(|c| &c.target == target) {
        Some(i) => i,
        None => {
            let at = convs.partition_point(|c| order(&c.target) < order(target));
            convs.insert(at, Conversation::new(target.clone()));
            at
        }
    };
    &mut convs[i]
}

/// Adds a clip (or updates one already listed: its sequence number and length); `played`
/// says whether a new clip counts as heard. Returns the conversation and whether it is new.
pub fn add_clip(
    convs: &mut Vec<Conversation>,
    me: &str,
    meta: &ClipMeta,
    played: bool,
) -> (Target, bool) {
    let target = conversation_of(&meta.to, &meta.from, me);
    let conv = ensure(convs, &target);
    if let Some(c) = conv.clips.iter_mut().find(|c| c.id == meta.id) {
        let moved = meta.seq > 0 && c.seq != meta.seq;
        if meta.seq > 0 {
            c.seq = meta.seq;
        }
        c.duration_ms = u64::from(meta.duration_ms);
        c.queued = false;
        if meta.content == Content::Recalled {
            c.content = Content::Recalled;
            c.body = None;
            c.played = true;
        }
        if moved {
            conv.clips.sort_by_key(clip_order);
        }
        return (target, false);
    }
    let mine = meta.from == me;
    let view = ClipView {
        id: meta.id,
        from: meta.from.clone(),
        mine,
        started_at_ms: meta.started_at_ms,
        duration_ms: u64::from(meta.duration_ms),
        seq: meta.seq,
        peaks: Vec::new(),
        played: played || mine,
        played_by: Vec::new(),
        queued: false,
        // A recalled message has nothing left to read.
        content: meta.content,
        body: None,
    };
    let view = ClipView {
        played: view.played || meta.content == Content::Recalled,
        ..view
    };
    let at = conv
        .clips
        .partition_point(|c| clip_order(c) < clip_order(&view));
    conv.clips.insert(at, view);
    recount(conv);
    (target, true)
}

/// Where a clip goes in its conversation: in the relay's order (its sequence number; the
/// sender's clock is only a claim), clips not stored yet last, in the order they were made.
fn clip_order(c: &ClipView) -> (u64, i64, [u8; 16]) {
    (
        if c.seq == 0 { u64::MAX } else { c.seq },
        c.started_at_ms,
        c.id.0,
    )
}

fn recount(conv: &mut Conversation) {
    conv.unread = conv.clips.iter().filter(|c| !c.played && !c.mine).count();
}

/// The clip with this id, and its conversation.
pub fn find(convs: &[Conversation], id: ClipId) -> Option<(&Conversation, &ClipView)> {
    convs
        .iter()
        .find_map(|conv| conv.clips.iter().find(|c| c.id == id).map(|c| (conv, c)))
}

fn find_mut(convs: &mut [Conversation], id: ClipId) -> Option<(&mut Conversation, usize)> {
    convs.iter_mut().find_map(|conv| {
        let i = conv.clips.iter().position(|c| c.id == id)?;
        Some((conv, i))
    })
}

/// Marks a clip played; true if it was unplayed (send the receipt then).
pub fn mark_played(convs: &mut [Conversation], id: ClipId) -> bool {
    let Some((conv, i)) = find_mut(convs, id) else {
        return false;
    };
    let was = !conv.clips[i].played;
    conv.clips[i].played = true;
    recount(conv);
    was
}

/// Sets a clip's waveform.
pub fn set_peaks(convs: &mut [Conversation], id: ClipId, peaks: Vec<f32>) {
    if let Some((conv, i)) = find_mut(convs, id) {
        conv.clips[i].peaks = peaks;
    }
}

/// Marks one of your clips as waiting in the outbox (or not).
pub fn set_queued(convs: &mut [Conversation], id: ClipId, queued: bool) {
    if let Some((conv, i)) = find_mut(convs, id) {
        conv.clips[i].queued = queued;
    }
}

/// Sets what a message shows, once its payload is here.
pub fn set_body(convs: &mut [Conversation], id: ClipId, body: Body) {
    if let Some((conv, i)) = find_mut(convs, id) {
        conv.clips[i].body = Some(body);
    }
}

/// A message was recalled: what it showed is gone, and it no longer counts as unread.
/// True if it was listed.
pub fn recall(convs: &mut [Conversation], id: ClipId) -> bool {
    let Some((conv, i)) = find_mut(convs, id) else {
        return false;
    };
    let c = &mut conv.clips[i];
    c.content = Content::Recalled;
    c.body = None;
    c.played = true;
    c.peaks.clear();
    recount(conv);
    true
}

/// Removes an item (a message the relay refused for good).
pub fn remove(convs: &mut [Conversation], id: ClipId) {
    if let Some((conv, i)) = find_mut(convs, id) {
        conv.clips.remove(i);
        recount(conv);
    }
}

/// Notes that `user` played your clip `id`.
pub fn add_receipt(convs: &mut [Conversation], id: ClipId, user: &str) {
    if let Some((conv, i)) = find_mut(convs, id) {
        let by = &mut conv.clips[i].played_by;
        if !by.iter().any(|u| u == user) {
            by.push(user.to_string());
        }
    }
}

/// Who is online (everyone else offline); each becomes a contact.
pub fn set_online(convs: &mut Vec<Conversation>, me: &str, users: &[String]) {
    for u in users.iter().filter(|u| *u != me) {
        ensure(convs, &Target::User(u.clone()));
    }
    for c in convs.iter_mut() {
        if let Target::User(u) = &c.target {
            c.online = Some(users.contains(u));
        }
    }
}

/// `user` came online or went offline.
pub fn set_presence(convs: &mut Vec<Conversation>, me: &str, user: &str, online: bool) {
    if user != me {
        ensure(convs, &Target::User(user.to_string())).online = Some(online);
    }
}

/// The oldest known sequence number of a conversation, to page history back from.
pub fn oldest_seq(conv: &Conversation) -> Option<u64> {
    conv.clips.iter().map(|c| c.seq).filter(|&s| s > 0).min()
}

#[cfg(test)]
mod tests {
    use super::*;
    use walkie_proto::clip::CodecParams;

    fn meta(n: u8, from: &str, to: Target, at: i64) -> ClipMeta {
        ClipMeta {
            id: ClipId([n; 16]),
            from: from.into(),
            to,
            started_at_ms: at,
            duration_ms: 1_000,
            packets: 50,
            bytes: 3_000,
            codec: CodecParams {
                frame_samples: 960,
                bitrate: 24_000,
                pre_skip: 312,
            },
            seq: u64::from(n),
            content: Default::default(),
        }
    }

    #[test]
    fn a_message_shows_its_body_until_recalled_and_a_recalled_one_is_never_unread() {
        let crew = Target::Channel("crew".into());
        let mut convs = Vec::new();
        let text = ClipMeta {
            content: Content::Text { chars: 2 },
            ..meta(1, "bob", crew.clone(), 100)
        };
        add_clip(&mut convs, "me", &text, false);
        set_body(&mut convs, text.id, Body::Text("hi".into()));
        assert_eq!(
            (convs[0].unread, convs[0].clips[0].body.clone()),
            (1, Some(Body::Text("hi".into())))
        );
        assert!(recall(&mut convs, text.id));
        let c = &convs[0].clips[0];
        assert_eq!(
            (c.content, c.body.clone(), c.played, convs[0].unread),
            (Content::Recalled, None, true, 0)
        );
        // Listed from history after its recall: recalled from the start.
        let gone = ClipMeta {
            content: Content::Recalled,
            ..meta(2, "bob", crew.clone(), 200)
        };
        add_clip(&mut convs, "me", &gone, false);
        assert_eq!(convs[0].unread, 0);
        assert!(
            !recall(&mut convs, ClipId([9; 16])),
            "an unknown id changes nothing"
        );
        remove(&mut convs, gone.id);
        assert_eq!(convs[0].clips.len(), 1);
    }

    #[test]
    fn clips_land_in_their_conversation_in_time_order_once_with_unread_counts() {
        let crew = Target::Channel("crew".into());
        let mut convs = Vec::new();
        assert_eq!(
            add_clip(&mut convs, "me", &meta(2, "bob", crew.clone(), 200), false),
            (crew.clone(), true)
        );
        assert!(add_clip(&mut convs, "me", &meta(1, "ann", crew.clone(), 100), true).1);
        assert!(
            !add_clip(&mut convs, "me", &meta(2, "bob", crew.clone(), 200), false).1,
            "no duplicate"
        );
        add_clip(&mut convs, "me", &meta(3, "me", crew.clone(), 300), false);
        let dm = add_clip(
            &mut convs,
            "me",
            &meta(4, "bob", Target::User("me".into()), 50),
            false,
        )
        .0;
        assert_eq!(
            dm,
            Target::User("bob".into()),
            "a direct clip belongs to its sender's conversation"
        );
        let mine = add_clip(
            &mut convs,
            "me",
            &meta(5, "me", Target::User("ann".into()), 60),
            false,
        )
        .0;
        assert_eq!(mine, Target::User("ann".into()));
        let labels: Vec<String> = convs.iter().map(|c| c.label()).collect();
        assert_eq!(labels, ["crew", "@ann", "@bob"], "channels first");
        let c = &convs[0];
        assert_eq!(
            c.clips.iter().map(|c| c.id.0[0]).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        assert_eq!(
            c.unread, 1,
            "only bob's clip is unheard (your own count as played)"
        );
        assert!(mark_played(&mut convs, ClipId([2; 16])));
        assert!(
            !mark_played(&mut convs, ClipId([2; 16])),
            "a receipt goes once"
        );
        assert_eq!(convs[0].unread, 0);
        assert_eq!(oldest_seq(&convs[0]), Some(1));
        add_receipt(&mut convs, ClipId([3; 16]), "bob");
        add_receipt(&mut convs, ClipId([3; 16]), "bob");
        assert_eq!(
            find(&convs, ClipId([3; 16])).map(|(_, c)| c.played_by.clone()),
            Some(vec!["bob".to_string()])
        );
    }

    #[test]
    fn clips_are_in_the_relays_order_whatever_their_senders_clocks_say() {
        let crew = Target::Channel("crew".into());
        let mut convs = Vec::new();
        // bob's clock is years behind: his clip (seq 7) still comes after ann's (seq 5).
        add_clip(
            &mut convs,
            "me",
            &meta(7, "bob", crew.clone(), 1_262_304_000_000),
            false,
        );
        add_clip(
            &mut convs,
            "me",
            &meta(5, "ann", crew.clone(), 1_790_000_000_000),
            false,
        );
        // A clip of mine waiting in the outbox (no seq yet) goes last, then takes its place.
        let mut queued = meta(9, "me", crew.clone(), 1_700_000_000_000);
        queued.seq = 0;
        add_clip(&mut convs, "me", &queued, true);
        add_clip(
            &mut convs,
            "me",
            &meta(6, "ann", crew.clone(), 1_790_000_000_001),
            false,
        );
        assert_eq!(
            convs[0].clips.iter().map(|c| c.id.0[0]).collect::<Vec<_>>(),
            [5, 6, 7, 9]
        );
        queued.seq = 6;
        let mut stored = queued.clone();
        stored.seq = 8;
        add_clip(&mut convs, "me", &stored, true);
        assert_eq!(
            convs[0].clips.iter().map(|c| c.id.0[0]).collect::<Vec<_>>(),
            [5, 6, 7, 9]
        );
        stored.seq = 1;
        add_clip(&mut convs, "me", &stored, true);
        assert_eq!(
            convs[0].clips.iter().map(|c| c.id.0[0]).collect::<Vec<_>>(),
            [9, 5, 6, 7],
            "re-placed by its seq"
        );
    }

    #[test]
    fn presence_makes_contacts_and_marks_them_online_or_offline() {
        let mut convs = Vec::new();
        set_online(&mut convs, "me", &["bob".into(), "me".into()]);
        assert_eq!(convs.len(), 1);
        assert_eq!(convs[0].online, Some(true));
        set_presence(&mut convs, "me", "bob", false);
        set_presence(&mut convs, "me", "cy", true);
        let state: Vec<(String, Option<bool>)> =
            convs.iter().map(|c| (c.label(), c.online)).collect();
        assert_eq!(
            state,
            [
                ("@bob".to_string(), Some(false)),
                ("@cy".to_string(), Some(true))
            ]
        );
        ensure(&mut convs, &Target::Channel("crew".into()));
        assert_eq!(convs[0].online, None, "channels have no presence");
    }
}
