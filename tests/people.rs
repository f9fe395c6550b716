//! People through a real relay on loopback, from clients: invite links and sign-up (with
//! every refusal, and the per-address limit a code guesser hits), display names, contacts
//! (requests, acceptance, who may send direct clips, silent blocks), and channels users make
//! (owners, members, outsiders). The command-line side is in `tests/cli.rs`.

mod support;

use std::time::Duration;

use support::*;
use walkie_client::people::join;
use walkie_client::{Client, ClientConfig, ClientError, Event};
use walkie_media::codec::{self, EncoderConfig};
use walkie_proto::clip::{ClipHeader, ClipId, CodecParams, Target, now_ms};
use walkie_proto::people::{
    ContactAction, ContactState, DirectFrom, GroupAction, Invite, InviteLink,
};
use walkie_proto::wire::{ErrorCode, GroupInfo};
use walkie_relay::RelayConfig;
use walkie_relay::people::{self, ChannelCreate};
use walkie_store::Store;

fn tone() -> (CodecParams, Vec<Vec<u8>>, u64) {
    let pcm: Vec<f32> = (0..300 * 48)
        .map(|i| (i as f32 * 0.02).sin() * 0.3)
        .collect();
    let clip = codec::encode_pcm(&pcm, &EncoderConfig::default()).expect("encodes");
    (clip.params, clip.packets, clip.samples)
}

/// Sends a short clip; the relay's answer.
async fn send(client: &Client, to: Target) -> Result<ClipId, ClientError> {
    let (codec, packets, samples) = tone();
    let header = ClipHeader {
        id: ClipId::random(),
        to,
        started_at_ms: now_ms(),
        codec,
    };
    client
        .send_clip(&header, &packets, samples)
        .await
        .map(|_| header.id)
}

fn refused(e: ClientError) -> (ErrorCode, String) {
    match e {
        ClientError::Refused(m) => (m.code, m.message),
        other => panic!("expected a refusal, got {other}"),
    }
}

fn link(relay: &TestRelay, invite: Invite) -> InviteLink {
    let code = people::create_invite(relay.store.as_ref(), &invite).expect("invite made");
    InviteLink {
        addr: relay.handle.addr.to_string(),
        code: Some(code),
        fingerprint: Some(relay.handle.fingerprint.to_string()),
    }
}

fn invite(uses: u32, channel: Option<&str>) -> Invite {
    Invite {
        uses_left: uses,
        expires_ms: now_ms() + 3_600_000,
        channel: channel.map(str::to_string),
        created_by: None,
        device_of: None,
    }
}

/// The channel names in the next channel list pushed to `client`.
async fn next_channels(client: &mut Client) -> Vec<String> {
    wait_for(client, 10, |e| match e {
        Event::Channels(c) => Some(c),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_link_signs_people_up_and_every_bad_code_says_why() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let alice = relay.add_user("alice");
    relay.add_channel("crew", &["alice"]);
    let two = link(&relay, invite(2, Some("crew")));

    let zoe = join(&two, "zoe", Some("  Zoe\u{308} 张伟 "))
        .await
        .expect("joins");
    assert_eq!(
        (zoe.user.as_str(), zoe.channel.as_deref(), zoe.pin),
        ("zoe", Some("crew"), Some(relay.handle.fingerprint))
    );
    assert_eq!(zoe.token.len(), 64);
    let zoe_cfg = relay.config_for("zoe", &zoe.token);
    let zoe_c = relay.connect(&zoe_cfg).await;
    assert_eq!(
        zoe_c
            .groups()
            .await
            .expect("groups")
            .iter()
            .map(|g| g.name.as_str())
            .collect::<Vec<_>>(),
        ["crew"]
    );
    let me = zoe_c.set_profile(None, None).await.expect("reads");
    assert_eq!(me.display.as_deref(), Some("Zoë 张伟"), "NFC, trimmed");
    let alice_c = relay.connect(&alice).await;
    let seen = alice_c
        .profiles(vec!["zoe".into(), "nobody".into(), "alice".into()])
        .await
        .expect("profiles");
    assert_eq!(
        seen.iter()
            .map(|p| (p.user.as_str(), p.display.as_deref()))
            .collect::<Vec<_>>(),
        [("zoe", Some("Zoë 张伟")), ("alice", None)]
    );

    // A taken name spends nothing: the second use still works afterwards.
    let (code, why) = refused(join(&two, "alice", None).await.expect_err("taken"));
    assert_eq!(code, ErrorCode::Conflict);
    assert!(why.contains("taken"), "{why}");
    let (code, why) = refused(join(&two, "Bad Name", None).await.expect_err("bad name"));
    assert_eq!(code, ErrorCode::BadRequest, "{why}");
    let (_, why) = refused(
        join(&two, "evil", Some("a\u{202e}b"))
            .await
            .expect_err("bad display"),
    );
    assert!(why.contains("U+202E"), "{why}");
    join(&two, "yan", None).await.expect("the second use");
    let (code, why) = refused(join(&two, "xia", None).await.expect_err("spent"));
    assert_eq!(code, ErrorCode::Unauthorized);
    assert!(why.contains("already used"), "{why}");

    let unknown = InviteLink {
        code: Some("0".repeat(32)),
        ..two.clone()
    };
    assert!(
        refused(join(&unknown, "xia", None).await.expect_err("unknown"))
            .1
            .contains("not known")
    );
    let old = link(
        &relay,
        Invite {
            expires_ms: now_ms() - 7_200_000,
            ..invite(1, None)
        },
    );
    assert!(
        refused(join(&old, "xia", None).await.expect_err("expired"))
            .1
            .contains("expired 2 hours ago")
    );
    let open = InviteLink {
        code: None,
        ..two.clone()
    };
    assert!(
        refused(join(&open, "xia", None).await.expect_err("invite only"))
            .1
            .contains("invite only")
    );
    // A link with someone else's pin never reaches this relay's sign-up.
    let wrong_pin = InviteLink {
        fingerprint: Some(format!("sha256:{}", "ab".repeat(32))),
        ..two.clone()
    };
    assert!(
        matches!(
            join(&wrong_pin, "xia", None).await,
            Err(ClientError::Net(_))
        ),
        "a wrong pin fails the handshake"
    );
    // Expired invites are swept; used ones stay until then, to say they were used.
    assert_eq!(
        people::sweep_invites(relay.store.as_ref(), now_ms()).expect("sweeps"),
        1
    );
    assert_eq!(relay.store.users().expect("users"), ["alice", "yan", "zoe"]);
    assert_eq!(
        relay.store.members("crew").expect("crew"),
        Some(vec!["alice".to_string(), "yan".into(), "zoe".into()])
    );
    zoe_c.close().await;
    alice_c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_sign_up_is_a_setting_and_one_address_cannot_guess_codes_or_sign_up_at_speed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = RelayConfig {
        open_signup: true,
        signups_per_source_per_hour: 5,
        ..RelayConfig::default()
    };
    let relay = start_relay(&tmp.path().join("relay"), config).await;
    let open = InviteLink {
        addr: relay.handle.addr.to_string(),
        code: None,
        fingerprint: Some(relay.handle.fingerprint.to_string()),
    };
    join(&open, "first", Some("First"))
        .await
        .expect("open sign-up works");
    let guess = |i: u32| InviteLink {
        code: Some(format!("{i:032x}")),
        ..open.clone()
    };
    for i in 0..4 {
        let (code, _) = refused(
            join(&guess(i), "guesser", None)
                .await
                .expect_err("wrong code"),
        );
        assert_eq!(code, ErrorCode::Unauthorized);
    }
    // Five attempts an hour from this address: the sixth is refused before any lookup.
    let (code, why) = refused(
        join(&guess(99), "guesser", None)
            .await
            .expect_err("limited"),
    );
    assert!(
        matches!(code, ErrorCode::Busy { retry_after_ms } if retry_after_ms > 600_000),
        "{code:?} {why}"
    );
    assert!(
        refused(join(&open, "second", None).await.expect_err("limited too"))
            .1
            .contains("too many sign-ups")
    );
    assert_eq!(relay.store.users().expect("users"), ["first"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_ask_and_accept_and_direct_clips_follow_the_recipients_choice() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let (alice, bob) = (relay.add_user("alice"), relay.add_user("bob"));
    let (alice_c, mut bob_c) = (relay.connect(&alice).await, relay.connect(&bob).await);
    alice_c
        .set_profile(Some("Alice".into()), None)
        .await
        .expect("named");

    // bob takes direct clips from contacts only: alice is refused until they are contacts.
    assert_eq!(
        bob_c
            .set_profile(None, Some(DirectFrom::Contacts))
            .await
            .expect("set")
            .direct_from,
        DirectFrom::Contacts
    );
    let (code, why) = refused(
        send(&alice_c, Target::User("bob".into()))
            .await
            .expect_err("not a contact"),
    );
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(why.contains("contacts only"), "{why}");

    let asked = alice_c
        .contact("bob", ContactAction::Add)
        .await
        .expect("asks");
    assert_eq!(asked.state, Some(ContactState::Requested));
    let heard = wait_for(&mut bob_c, 10, |e| match e {
        Event::ContactChanged(entry) => Some(entry),
        _ => None,
    })
    .await;
    assert_eq!(
        (heard.user.as_str(), heard.display.as_deref(), heard.state),
        ("alice", Some("Alice"), Some(ContactState::Incoming))
    );
    assert!(
        refused(
            alice_c
                .contact("bob", ContactAction::Accept)
                .await
                .expect_err("own request")
        )
        .1
        .contains("not asked")
    );
    let accepted = bob_c
        .contact("alice", ContactAction::Accept)
        .await
        .expect("accepts");
    assert_eq!(
        (accepted.state, accepted.online),
        (Some(ContactState::Contact), true)
    );
    let list = alice_c.contacts().await.expect("lists");
    assert_eq!(
        list.iter()
            .map(|c| (c.user.as_str(), c.state, c.online))
            .collect::<Vec<_>>(),
        [("bob", Some(ContactState::Contact), true)]
    );

    let id = send(&alice_c, Target::User("bob".into()))
        .await
        .expect("contacts may send");
    let got = wait_for(&mut bob_c, 10, |e| match e {
        Event::Clip(c) => Some(c.header.id),
        _ => None,
    })
    .await;
    assert_eq!(got, id);
    assert!(
        refused(
            alice_c
                .contact("nobody", ContactAction::Add)
                .await
                .expect_err("unknown")
        )
        .1
        .contains("no user @nobody")
    );
    assert!(
        refused(
            alice_c
                .contact("alice", ContactAction::Add)
                .await
                .expect_err("self")
        )
        .1
        .contains("your own")
    );

    // Removing ends it on both sides: bob is back to contacts-only for alice.
    assert_eq!(
        alice_c
            .contact("bob", ContactAction::Remove)
            .await
            .expect("removes")
            .state,
        None
    );
    assert_eq!(bob_c.contacts().await.expect("lists"), vec![]);
    assert_eq!(
        refused(
            send(&alice_c, Target::User("bob".into()))
                .await
                .expect_err("no longer")
        )
        .0,
        ErrorCode::Forbidden
    );
    alice_c.close().await;
    bob_c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_user_never_reaches_the_blocker_and_is_not_told() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let (mallory, bob, carol) = (
        relay.add_user("mallory"),
        relay.add_user("bob"),
        relay.add_user("carol"),
    );
    relay.add_channel("crew", &["mallory", "bob", "carol"]);
    let mallory_c = relay.connect(&mallory).await;
    let (mut bob_c, mut carol_c) = (relay.connect(&bob).await, relay.connect(&carol).await);
    send(&mallory_c, Target::User("bob".into()))
        .await
        .expect("anyone may, by default");
    assert_eq!(
        bob_c
            .contact("mallory", ContactAction::Block)
            .await
            .expect("blocks")
            .state,
        Some(ContactState::Blocked)
    );

    // The refusal reads exactly as "contacts only" does: mallory cannot tell she is blocked.
    let (code, why) = refused(
        send(&mallory_c, Target::User("bob".into()))
            .await
            .expect_err("blocked"),
    );
    assert_eq!(
        (code, why.as_str()),
        (
            ErrorCode::Forbidden,
            "@bob takes direct clips from their contacts only"
        )
    );
    // Her request looks unanswered; bob hears nothing and still sees only his block.
    assert_eq!(
        mallory_c
            .contact("bob", ContactAction::Add)
            .await
            .expect("asks")
            .state,
        Some(ContactState::Requested)
    );
    let bob_list = bob_c.contacts().await.expect("lists");
    assert_eq!(
        bob_list
            .iter()
            .map(|c| (c.user.as_str(), c.state))
            .collect::<Vec<_>>(),
        [("mallory", Some(ContactState::Blocked))]
    );
    // Her channel clip reaches carol, not bob; bob's own clips still reach everyone.
    let hers = send(&mallory_c, Target::Channel("crew".into()))
        .await
        .expect("channel clip stored");
    let carol_got = wait_for(&mut carol_c, 10, |e| match e {
        Event::Clip(c) => Some(c.header.id),
        _ => None,
    })
    .await;
    assert_eq!(carol_got, hers);
    let his = send(&bob_c, Target::Channel("crew".into()))
        .await
        .expect("bob sends");
    let mut bob_clips = Vec::new();
    let mut mallory_c = mallory_c;
    let mallory_got = wait_for(&mut mallory_c, 10, |e| match e {
        Event::Clip(c) => Some(c.header.id),
        _ => None,
    })
    .await;
    assert_eq!(mallory_got, his);
    // bob's inbox: the direct clip from before the block, and nothing of hers since.
    while let Ok(Some(e)) =
        tokio::time::timeout(Duration::from_millis(500), bob_c.next_event()).await
    {
        if let Event::Clip(c) = e {
            bob_clips.push((c.header.from.clone(), c.header.to.clone()));
        }
    }
    assert_eq!(
        bob_clips,
        [("mallory".to_string(), Target::User("bob".into()))]
    );
    assert!(
        relay
            .store
            .pending("bob", 0, 10)
            .expect("inbox")
            .iter()
            .all(|m| m.id != hers)
    );
    // Lifting the block (remove) lets her direct clips through again.
    bob_c
        .contact("mallory", ContactAction::Remove)
        .await
        .expect("unblocks");
    send(&mallory_c, Target::User("bob".into()))
        .await
        .expect("unblocked");
    for c in [mallory_c, bob_c, carol_c] {
        c.close().await;
    }
}

fn names(g: &Option<GroupInfo>) -> (String, Option<String>, Vec<String>, Option<String>) {
    let g = g.as_ref().expect("a channel");
    (
        g.name.clone(),
        g.owner.clone(),
        g.members.clone(),
        g.title.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_make_channels_owners_manage_them_and_outsiders_cannot() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let (alice, bob, carol, dave) = (
        relay.add_user("alice"),
        relay.add_user("bob"),
        relay.add_user("carol"),
        relay.add_user("dave"),
    );
    relay.add_channel("crew", &["alice", "bob"]);
    let alice_c = relay.connect(&alice).await;
    let (mut bob_c, carol_c, dave_c) = (
        relay.connect(&bob).await,
        relay.connect(&carol).await,
        relay.connect(&dave).await,
    );
    assert_eq!(
        next_channels(&mut bob_c).await,
        ["crew"],
        "the list after the welcome"
    );
    carol_c
        .set_profile(None, Some(DirectFrom::Contacts))
        .await
        .expect("contacts only");

    let team = alice_c
        .group(
            "team",
            GroupAction::Create {
                members: vec!["bob".into()],
            },
        )
        .await
        .expect("creates");
    assert_eq!(
        names(&team),
        (
            "team".into(),
            Some("alice".into()),
            vec!["alice".into(), "bob".into()],
            None
        )
    );
    assert_eq!(
        next_channels(&mut bob_c).await,
        ["crew", "team"],
        "bob is told at once"
    );
    let (code, why) = refused(
        alice_c
            .group("crew", GroupAction::Create { members: vec![] })
            .await
            .expect_err("taken"),
    );
    assert_eq!(code, ErrorCode::Conflict, "{why}");
    // Members are added only where a direct clip would be welcome.
    let (code, why) = refused(
        alice_c
            .group(
                "team",
                GroupAction::Invite {
                    user: "carol".into(),
                },
            )
            .await
            .expect_err("contacts only"),
    );
    assert_eq!(code, ErrorCode::Forbidden, "{why}");

    // An outsider can do nothing, and learns nothing about whether the channel exists.
    for action in [
        GroupAction::Invite {
            user: "dave".into(),
        },
        GroupAction::Delete,
        GroupAction::Leave,
        GroupAction::Rename { title: "x".into() },
    ] {
        let (code, why) = refused(dave_c.group("team", action).await.expect_err("outsider"));
        assert_eq!(
            (code, why.as_str()),
            (ErrorCode::Forbidden, "you are not a member of channel team")
        );
    }
    let (_, why) = refused(
        dave_c
            .group("nothing", GroupAction::Delete)
            .await
            .expect_err("absent"),
    );
    assert_eq!(why, "you are not a member of channel nothing");
    // A member invites; only the owner renames or deletes.
    let (code, why) = refused(
        bob_c
            .group("team", GroupAction::Delete)
            .await
            .expect_err("not the owner"),
    );
    assert_eq!(
        (code, why.as_str()),
        (
            ErrorCode::Forbidden,
            "only the owner of channel team may rename or delete it"
        )
    );
    assert!(
        refused(
            bob_c
                .group("team", GroupAction::Rename { title: "B".into() })
                .await
                .expect_err("not the owner")
        )
        .1
        .contains("only the owner")
    );
    let invited = bob_c
        .group(
            "team",
            GroupAction::Invite {
                user: "dave".into(),
            },
        )
        .await
        .expect("member invites");
    assert_eq!(names(&invited).2, ["alice", "bob", "dave"]);
    let renamed = alice_c
        .group(
            "team",
            GroupAction::Rename {
                title: "Équipe 🚀".into(),
            },
        )
        .await
        .expect("owner renames");
    assert_eq!(names(&renamed).3.as_deref(), Some("Équipe 🚀"));
    // The administrator's channel: members may leave but not manage it.
    assert!(
        refused(
            bob_c
                .group(
                    "crew",
                    GroupAction::Invite {
                        user: "dave".into()
                    }
                )
                .await
                .expect_err("admin's")
        )
        .1
        .contains("administrator")
    );

    // Deleting takes every clip with it; a member who left no longer reads it.
    let clip = send(&dave_c, Target::Channel("team".into()))
        .await
        .expect("member sends");
    assert!(relay.store.clip(&clip).expect("reads").is_some());
    assert_eq!(
        dave_c
            .group("team", GroupAction::Leave)
            .await
            .expect("leaves"),
        None
    );
    assert_eq!(
        refused(
            send(&dave_c, Target::Channel("team".into()))
                .await
                .expect_err("left")
        )
        .0,
        ErrorCode::Forbidden
    );
    assert_eq!(
        alice_c
            .group("team", GroupAction::Delete)
            .await
            .expect("owner deletes"),
        None
    );
    // (The rename sent bob his list again; the list after the deletion has no team.)
    let after = wait_for(&mut bob_c, 10, |e| match e {
        Event::Channels(c) if !c.contains(&"team".to_string()) => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(after, ["crew"]);
    assert_eq!(relay.store.clip(&clip).expect("reads"), None);
    assert_eq!(relay.store.members("team").expect("reads"), None);
    assert_eq!(alice_c.groups().await.expect("lists").len(), 1);

    // An owner who leaves hands the channel on; the last one out deletes it.
    alice_c
        .group(
            "duo",
            GroupAction::Create {
                members: vec!["bob".into()],
            },
        )
        .await
        .expect("creates");
    alice_c
        .group("duo", GroupAction::Leave)
        .await
        .expect("owner leaves");
    assert_eq!(
        names(
            &bob_c
                .groups()
                .await
                .expect("lists")
                .into_iter()
                .find(|g| g.name == "duo")
        )
        .1
        .as_deref(),
        Some("bob")
    );
    bob_c
        .group("duo", GroupAction::Leave)
        .await
        .expect("last one leaves");
    assert_eq!(relay.store.members("duo").expect("reads"), None);
    for c in [alice_c, bob_c, carol_c, dave_c] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn where_only_administrators_make_channels_users_are_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = RelayConfig {
        channel_create: ChannelCreate::Admins,
        ..RelayConfig::default()
    };
    let relay = start_relay(&tmp.path().join("relay"), config).await;
    let alice: ClientConfig = relay.add_user("alice");
    let alice_c = relay.connect(&alice).await;
    let (code, why) = refused(
        alice_c
            .group("mine", GroupAction::Create { members: vec![] })
            .await
            .expect_err("admins only"),
    );
    assert_eq!(
        (code, why.as_str()),
        (
            ErrorCode::Forbidden,
            "on this relay only the administrator makes channels"
        )
    );
    assert_eq!(relay.store.members("mine").expect("reads"), None);
    alice_c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_requests_are_rate_limited_per_user() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let (alice, bob) = (relay.add_user("alice"), relay.add_user("bob"));
    let (alice_c, bob_c) = (relay.connect(&alice).await, relay.connect(&bob).await);
    let mut busy = 0;
    for _ in 0..80 {
        match alice_c.contacts().await {
            Ok(_) => {}
            Err(ClientError::Refused(e)) if matches!(e.code, ErrorCode::Busy { .. }) => busy += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        (15..=25).contains(&busy),
        "a burst of 60, then about one a second: {busy} of 80 refused"
    );
    bob_c.contacts().await.expect("others are not affected");
    alice_c.close().await;
    bob_c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_user_leaves_no_trace_in_others_contacts_and_their_channels_pass_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let (alice, bob) = (relay.add_user("alice"), relay.add_user("bob"));
    let (alice_c, bob_c) = (relay.connect(&alice).await, relay.connect(&bob).await);
    alice_c
        .contact("bob", ContactAction::Add)
        .await
        .expect("asks");
    alice_c
        .group(
            "made",
            GroupAction::Create {
                members: vec!["bob".into()],
            },
        )
        .await
        .expect("creates");
    alice_c.close().await;
    let store: &dyn Store = relay.store.as_ref();
    assert!(store.remove_user("alice").expect("removes"));
    people::forget(store, "alice").expect("forgets");
    assert_eq!(bob_c.contacts().await.expect("lists"), vec![]);
    assert_eq!(store.record(&["person", "alice"]).expect("reads"), None);
    let made = bob_c.groups().await.expect("lists");
    assert_eq!(
        names(&made.into_iter().find(|g| g.name == "made"))
            .1
            .as_deref(),
        Some("bob")
    );
    bob_c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_device_gets_every_clip_with_played_state_and_is_removed_within_two_seconds() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let (alice, bob) = (relay.add_user("alice"), relay.add_user("bob"));
    let (mut phone, bob_c) = (relay.connect(&alice).await, relay.connect(&bob).await);
    let (link, expires) = phone
        .link_device(&alice.relay, alice.trust.pin())
        .await
        .expect("a link");
    assert!(expires > now_ms() + 9 * 60_000 && expires <= now_ms() + 10 * 60_000);
    let joined = join(&link, "", Some("Laptop"))
        .await
        .expect("the laptop signs in");
    assert_eq!((joined.user.as_str(), joined.channel), ("alice", None));
    assert!(
        refused(join(&link, "", None).await.expect_err("once"))
            .1
            .contains("already used")
    );
    let laptop_cfg = relay.config_for("alice", &joined.token);

    // The laptop is offline: the phone gets a clip, plays and acknowledges it.
    let first = send(&bob_c, Target::User("alice".into()))
        .await
        .expect("sent");
    let got = wait_for(&mut phone, 10, |e| match e {
        Event::Clip(c) => Some(c.header.id),
        _ => None,
    })
    .await;
    assert_eq!(got, first);
    phone.ack(first).await.expect("acked");
    phone.played(first).await.expect("played");
    let listed = phone.devices().await.expect("lists");
    let shown: Vec<(&str, &str, bool, bool)> = listed
        .iter()
        .map(|d| (d.id.as_str(), d.name.as_str(), d.online, d.this))
        .collect();
    assert_eq!(shown[0], ("main", "first device", true, true));
    assert_eq!(
        (shown[1].1, shown[1].2, shown[1].3),
        ("Laptop", false, false)
    );
    let laptop_id = listed[1].id.clone();

    // The laptop comes online later: the clip is still delivered to it, already played.
    // The clip rides its own stream and the played mark the control stream, so either may
    // arrive first (the app keeps an early mark until its clip comes).
    let mut laptop = relay.connect(&laptop_cfg).await;
    let (mut got, mut played) = (None, None);
    within(10, "the clip and its played mark on the laptop", async {
        while got.is_none() || played.is_none() {
            match laptop.next_event().await {
                Some(Event::Clip(c)) => got = Some(c.header.id),
                Some(Event::PlayedBy(id, user)) => played = Some((id, user)),
                Some(_) => {}
                None => break,
            }
        }
    })
    .await;
    assert_eq!(
        got,
        Some(first),
        "acknowledged on the phone, still delivered to the laptop"
    );
    assert_eq!(
        played,
        Some((first, "alice".to_string())),
        "played on the phone shows played here"
    );
    laptop.ack(first).await.expect("acked");

    // Both online: both get the next one; playing it on the laptop tells the phone at once.
    let second = send(&bob_c, Target::User("alice".into()))
        .await
        .expect("sent");
    for device in [&mut phone, &mut laptop] {
        let got = wait_for(device, 10, |e| match e {
            Event::Clip(c) => Some(c.header.id),
            _ => None,
        })
        .await;
        assert_eq!(got, second);
    }
    laptop.played(second).await.expect("played");
    let told = wait_for(&mut phone, 10, |e| match e {
        Event::PlayedBy(id, user) if id == second => Some(user),
        _ => None,
    })
    .await;
    assert_eq!(told, "alice");

    // Removing the laptop ends its session within 2 seconds and its token stops working.
    let left = phone.remove_device(&laptop_id).await.expect("removes");
    assert_eq!(left.len(), 1);
    let started = std::time::Instant::now();
    within(5, "the laptop's session to end", async {
        while laptop.next_event().await.is_some() {}
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
    assert!(
        laptop
            .close_reason()
            .is_some_and(|r| r.contains("device was removed")),
        "{:?}",
        laptop.close_reason()
    );
    let again = Client::connect(&laptop_cfg).await.err().expect("refused");
    assert!(again.to_string().contains("wrong token"), "{again}");
    assert_eq!(
        relay
            .store
            .pending(&format!("alice/{laptop_id}"), 0, 10)
            .expect("inbox"),
        vec![],
        "its inbox is gone"
    );
    assert!(
        refused(
            phone
                .remove_device("main")
                .await
                .expect_err("the first stays")
        )
        .1
        .contains("new token")
    );
    phone.close().await;
    bob_c.close().await;
}

/// A 256 px PNG with a text chunk that must not survive (a client could put anything there).
fn png_with_secret(side: u32) -> Vec<u8> {
    let img =
        image::RgbaImage::from_fn(side, side, |x, y| image::Rgba([x as u8, y as u8, 200, 255]));
    let mut plain = std::io::Cursor::new(Vec::new());
    img.write_to(&mut plain, image::ImageFormat::Png)
        .expect("encodes");
    let plain = plain.into_inner();
    // A tEXt chunk after the IHDR (8-byte signature + 25-byte IHDR chunk); its CRC is valid.
    let data = b"Comment\0GPS 48.8584 2.2945 secret".to_vec();
    let mut chunk = (data.len() as u32).to_be_bytes().to_vec();
    let typed: Vec<u8> = [b"tEXt".as_slice(), &data].concat();
    chunk.extend_from_slice(&typed);
    chunk.extend_from_slice(&crc32(&typed).to_be_bytes());
    [&plain[..33], &chunk, &plain[33..]].concat()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_reencodes_avatars_and_refuses_what_a_hostile_client_sends_instead() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let (alice, bob) = (relay.add_user("alice"), relay.add_user("bob"));
    let (alice_c, bob_c) = (relay.connect(&alice).await, relay.connect(&bob).await);
    let sent = png_with_secret(256);
    assert!(
        sent.windows(6).any(|w| w == b"secret"),
        "the test picture carries its secret"
    );
    let me = alice_c.set_avatar(Some(sent)).await.expect("accepted");
    let tag = me.avatar.expect("a tag");
    let profile = bob_c
        .profiles(vec!["alice".into()])
        .await
        .expect("profiles");
    assert_eq!(profile[0].avatar.as_deref(), Some(tag.as_str()));
    for (small, side) in [(false, 256), (true, 64)] {
        let png = bob_c
            .avatar("alice", small)
            .await
            .expect("asks")
            .expect("has one");
        let back =
            image::load_from_memory_with_format(&png, image::ImageFormat::Png).expect("a PNG");
        assert_eq!((back.width(), back.height()), (side, side));
        assert!(
            !png.windows(6).any(|w| w == b"secret") && !png.windows(3).any(|w| w == b"GPS"),
            "nothing but pixels is kept"
        );
    }
    assert_eq!(bob_c.avatar("bob", true).await.expect("asks"), None);
    assert_eq!(bob_c.avatar("nobody", true).await.expect("asks"), None);

    // Straight to the relay, past the client's own checks: each refused, the avatar kept.
    let mut bomb = png_with_secret(256);
    bomb[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    bomb[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    for (bad, says) in [
        (bomb, "PNG"),
        (png_with_secret(300), "256×256"),
        (b"GIF89a not a png".to_vec(), "not a readable PNG"),
    ] {
        let (code, why) = refused(alice_c.set_avatar(Some(bad)).await.expect_err("refused"));
        assert_eq!(code, ErrorCode::BadRequest, "{why}");
        assert!(why.contains(says), "{why}");
    }
    let (code, why) = refused(
        alice_c
            .set_avatar(Some(vec![0; 600 * 1024]))
            .await
            .expect_err("too large"),
    );
    assert!(
        code == ErrorCode::BadRequest && why.contains("at most"),
        "{why}"
    );
    assert_eq!(
        bob_c
            .profiles(vec!["alice".into()])
            .await
            .expect("profiles")[0]
            .avatar
            .as_deref(),
        Some(tag.as_str())
    );
    // Removed on request, and by a purge.
    assert_eq!(
        alice_c.set_avatar(None).await.expect("removed").avatar,
        None
    );
    assert_eq!(bob_c.avatar("alice", false).await.expect("asks"), None);
    alice_c
        .set_avatar(Some(png_with_secret(256)))
        .await
        .expect("again");
    alice_c
        .set_profile(Some("Alice".into()), None)
        .await
        .expect("named");
    people::clear_profile(relay.store.as_ref(), "alice").expect("purged");
    let after = bob_c
        .profiles(vec!["alice".into()])
        .await
        .expect("profiles");
    assert_eq!(
        (after[0].display.as_deref(), after[0].avatar.as_deref()),
        (None, None)
    );
    assert_eq!(bob_c.avatar("alice", true).await.expect("asks"), None);
    alice_c.close().await;
    bob_c.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suggestions_rank_shared_contacts_and_channels_and_leave_out_who_must_not_be_shown() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let store: &dyn Store = relay.store.as_ref();
    for u in ["alice", "bob", "carol", "dave", "erin", "mallory", "quiet"] {
        relay.add_user(u);
    }
    relay.add_channel("crew", &["alice", "dave", "erin"]);
    let befriend = |a: &str, b: &str| {
        people::contact(store, a, b, ContactAction::Add).expect("asks");
        people::contact(store, b, a, ContactAction::Accept).expect("accepts");
    };
    befriend("alice", "bob");
    for friend in ["carol", "dave", "mallory", "quiet"] {
        befriend("bob", friend);
    }
    people::contact(store, "mallory", "alice", ContactAction::Block).expect("mallory blocks alice");
    people::set_profile_with(store, "quiet", None, None, Some(false))
        .expect("quiet turns suggestions off");
    people::set_profile(store, "dave", Some("Dave"), None).expect("named");

    let got = people::suggest(store, "alice").expect("suggests");
    let ranked: Vec<(&str, u32, Option<&str>)> = got
        .iter()
        .map(|s| (s.user.as_str(), s.mutual, s.display.as_deref()))
        .collect();
    // dave: bob's contact and a crew mate; carol: bob's contact; erin: a crew mate. Not bob
    // (already a contact), not mallory (she blocked alice), not quiet (suggestions off).
    assert_eq!(
        ranked,
        [
            ("dave", 2, Some("Dave")),
            ("carol", 1, None),
            ("erin", 1, None)
        ]
    );
    // Nobody is suggested someone they blocked.
    people::contact(store, "alice", "carol", ContactAction::Block).expect("blocks");
    assert!(
        people::suggest(store, "alice")
            .expect("suggests")
            .iter()
            .all(|s| s.user != "carol")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_nearby_see_each_other_by_coarse_cell_only_for_an_hour() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let (alice, bob, carol, dave) = (
        relay.add_user("alice"),
        relay.add_user("bob"),
        relay.add_user("carol"),
        relay.add_user("dave"),
    );
    let (alice_c, bob_c, carol_c, dave_c) = (
        relay.connect(&alice).await,
        relay.connect(&bob).await,
        relay.connect(&carol).await,
        relay.connect(&dave).await,
    );
    bob_c
        .set_profile(Some("Bob".into()), None)
        .await
        .expect("named");
    dave_c
        .contact("alice", ContactAction::Block)
        .await
        .expect("dave blocks alice");
    let eiffel = (48.8584, 2.2945);
    let (none, until) = alice_c.nearby(Some(eiffel)).await.expect("visible");
    assert!(none.is_empty());
    assert!(until > now_ms() + 59 * 60_000 && until <= now_ms() + 60 * 60_000);
    bob_c
        .nearby(Some((48.8530, 2.3499)))
        .await
        .expect("notre-dame");
    carol_c
        .nearby(Some((48.8049, 2.1204)))
        .await
        .expect("versailles, farther than 10 km");
    dave_c.nearby(Some(eiffel)).await.expect("dave, same cell");
    let (seen, _) = alice_c.nearby(Some(eiffel)).await.expect("lists");
    let seen: Vec<(&str, u32, Option<&str>)> = seen
        .iter()
        .map(|p| (p.user.as_str(), p.km, p.display.as_deref()))
        .collect();
    assert_eq!(
        seen,
        [("bob", 3, Some("Bob"))],
        "nor carol (too far) nor dave (he blocked alice)"
    );
    assert_eq!(
        bob_c
            .nearby(Some((48.8530, 2.3499)))
            .await
            .expect("lists")
            .0
            .iter()
            .map(|p| p.user.as_str())
            .collect::<Vec<_>>(),
        ["alice", "dave"]
    );

    // What is kept is the cell and an expiry: no coordinates, and nothing after an hour.
    let store: &dyn Store = relay.store.as_ref();
    let kept = store.record_keys(&["nearby"]).expect("keys");
    assert!(kept.iter().all(|k| k[1].len() == 4), "{kept:?}");
    for k in &kept {
        let text = String::from_utf8(
            store
                .record(&k.iter().map(String::as_str).collect::<Vec<_>>())
                .expect("reads")
                .expect("there")
                .value,
        )
        .expect("utf-8");
        assert!(
            !text.contains("48.8") && !text.contains("2.29") && !text.contains("2.34"),
            "{text}"
        );
    }
    let later = now_ms() + 61 * 60_000;
    assert_eq!(
        people::nearby(
            store,
            "carol",
            Some(&walkie_proto::people::cell_of(48.8584, 2.2945)),
            later
        )
        .expect("lists")
        .0,
        vec![],
        "an hour later nobody is left"
    );
    assert_eq!(
        people::sweep_nearby(store, later).expect("sweeps"),
        3,
        "alice, bob and dave were forgotten"
    );

    // Opting out is at once; a user who keeps moving (to map where people are) is stopped.
    bob_c.nearby(None).await.expect("hidden");
    assert!(
        alice_c
            .nearby(Some(eiffel))
            .await
            .expect("lists")
            .0
            .iter()
            .all(|p| p.user != "bob")
    );
    let mut refused_at = None;
    for i in 0..10 {
        match alice_c.nearby(Some((10.0 + f64::from(i), 10.0))).await {
            Ok(_) => {}
            Err(e) => {
                refused_at = Some((i, refused(e)));
                break;
            }
        }
    }
    let (i, (code, why)) = refused_at.expect("refused at some point");
    assert!(
        matches!(code, ErrorCode::Busy { .. }) && why.contains("times within an hour"),
        "{why}"
    );
    assert_eq!(i, 5, "six moves an hour (the first place counted)");
    for c in [alice_c, bob_c, carol_c, dave_c] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_see_each_others_presence_without_sharing_a_channel() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let relay = start_relay(&tmp.path().join("relay"), RelayConfig::default()).await;
    let (alice, bob, carol) = (
        relay.add_user("alice"),
        relay.add_user("bob"),
        relay.add_user("carol"),
    );
    let store: &dyn Store = relay.store.as_ref();
    people::contact(store, "alice", "bob", ContactAction::Add).expect("asks");
    people::contact(store, "bob", "alice", ContactAction::Accept).expect("accepts");
    people::contact(store, "alice", "carol", ContactAction::Add).expect("only asks");
    let bob_c = relay.connect(&bob).await;
    let mut alice_c = relay.connect(&alice).await;
    let online = wait_for(&mut alice_c, 10, |e| match e {
        Event::Online(users) => Some(users),
        _ => None,
    })
    .await;
    assert_eq!(
        online,
        ["bob"],
        "a contact's presence, with no channel shared"
    );
    let carol_c = relay.connect(&carol).await;
    bob_c.close().await;
    let went = wait_for(&mut alice_c, 10, |e| match e {
        Event::Presence(user, online) => Some((user, online)),
        _ => None,
    })
    .await;
    assert_eq!(
        went,
        ("bob".to_string(), false),
        "carol (only asked) is not told; bob going is"
    );
    carol_c.close().await;
    alice_c.close().await;
}
