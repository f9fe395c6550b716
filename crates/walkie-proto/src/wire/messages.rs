//! Every message of the wire protocol: control-stream requests and replies, clip and file
//! stream frames, and error codes.

use serde::{Deserialize, Serialize};

use crate::clip::{ClipHeader, ClipId, ClipMeta, CodecParams, Target};
use crate::people::{ContactAction, ContactState, DirectFrom, GroupAction};

/// Request id chosen by the client to match replies on the control stream.
pub type ReqId = u64;

/// Messages a client sends on its control stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// First message: who is connecting and their token.
    Hello {
        /// User name.
        user: String,
        /// The user's secret token (hex).
        token: String,
        /// Free-form client name and version, for logs.
        client: String,
    },
    /// A page of a conversation (`target`) or of everything the user may read (`None`),
    /// newest last: at most `limit` clips older than `before_seq` when given.
    History {
        /// Request id.
        req: ReqId,
        /// Channel, user, or everything readable.
        target: Option<Target>,
        /// Page size (capped by the relay).
        limit: u32,
        /// Only clips stored before this sequence number.
        before_seq: Option<u64>,
    },
    /// Asks for a stored clip's Ogg Opus file; it arrives on a relay-opened stream.
    Fetch {
        /// Request id, echoed in [`StreamFrame::File`].
        req: ReqId,
        /// The clip.
        id: ClipId,
    },
    /// The client holds this delivered clip; the relay removes it from the user's inbox.
    Ack {
        /// The clip.
        id: ClipId,
    },
    /// Liveness check; answered with [`ServerMsg::Pong`].
    Ping {
        /// Echoed back.
        nonce: u64,
    },
    /// The user has listened to this clip; the relay tells its sender (a read receipt).
    Played {
        /// The clip.
        id: ClipId,
    },
    /// Instead of a hello: make an account with an invite code (or without one, where the
    /// relay takes open sign-ups). Answered with [`ServerMsg::Joined`] (or an error), after
    /// which the relay closes the connection and the client signs in with its new token.
    Join {
        /// The invite code from the link; `None` for an open sign-up.
        code: Option<String>,
        /// The login name wanted.
        name: String,
        /// A display name (see [`crate::people::validate_display_name`]).
        display: Option<String>,
        /// Free-form client name and version, for logs.
        client: String,
    },
    /// Sets the fields given of the user's own profile (none: only read it); answered with
    /// [`ServerMsg::MyProfile`].
    SetProfile {
        /// Request id.
        req: ReqId,
        /// A new display name.
        display: Option<String>,
        /// Who may send the user direct clips.
        direct_from: Option<DirectFrom>,
        /// Whether others may be suggested this user ([`ClientMsg::Suggest`]).
        suggest: Option<bool>,
    },
    /// The public profiles of some users (at most [`MAX_PROFILES`]); answered with
    /// [`ServerMsg::Profiles`], which leaves out names that are not users.
    Profiles {
        /// Request id.
        req: ReqId,
        /// Login names.
        users: Vec<String>,
    },
    /// Does something about another user; answered with [`ServerMsg::Contacts`] holding
    /// that user's entry as it now stands.
    Contact {
        /// Request id.
        req: ReqId,
        /// The other user.
        user: String,
        /// What to do.
        action: ContactAction,
    },
    /// Everyone the user has to do with; answered with [`ServerMsg::Contacts`].
    Contacts {
        /// Request id.
        req: ReqId,
    },
    /// Does something to a channel; answered with [`ServerMsg::Groups`] holding the channel
    /// as it now stands (empty after leave and delete).
    Group {
        /// Request id.
        req: ReqId,
        /// The channel's name.
        channel: String,
        /// What to do.
        action: GroupAction,
    },
    /// The channels the user is a member of; answered with [`ServerMsg::Groups`].
    Groups {
        /// Request id.
        req: ReqId,
    },
    /// A one-time code that signs another device in as this user; answered with
    /// [`ServerMsg::DeviceLink`].
    LinkDevice {
        /// Request id.
        req: ReqId,
    },
    /// The user's devices; answered with [`ServerMsg::Devices`].
    Devices {
        /// Request id.
        req: ReqId,
    },
    /// Removes one of the user's other devices (its sessions end, its inbox goes); answered
    /// with [`ServerMsg::Devices`].
    RemoveDevice {
        /// Request id.
        req: ReqId,
        /// The device's id.
        id: String,
    },
    /// One part of a new avatar: a square 256 px PNG of `total` bytes (at most 512 KiB), sent
    /// in order in parts that fit a control message. The last part is answered with
    /// [`ServerMsg::MyProfile`]; `total` 0 removes the avatar.
    SetAvatar {
        /// Request id (the same for every part).
        req: ReqId,
        /// Where this part starts.
        offset: u32,
        /// The whole PNG's length.
        total: u32,
        /// The part.
        bytes: Vec<u8>,
    },
    /// A user's avatar; answered with [`ServerMsg::Avatar`].
    Avatar {
        /// Request id.
        req: ReqId,
        /// Whose.
        user: String,
        /// The 64 px one instead of the 256 px one.
        small: bool,
    },
    /// People the user may know (who share contacts or channels with them); answered with
    /// [`ServerMsg::Suggestions`].
    Suggest {
        /// Request id.
        req: ReqId,
    },
    /// Be visible to people nearby in this geohash cell for an hour, and list them (`None`:
    /// stop being visible). The client sends the cell, never a position; answered with
    /// [`ServerMsg::Nearby`].
    Nearby {
        /// Request id.
        req: ReqId,
        /// A geohash cell of [`crate::people::CELL_CHARS`] characters.
        cell: Option<String>,
    },
    /// Takes back one of the user's own messages or clips within the relay's recall window:
    /// its payload is deleted from the relay and every recipient is told; answered with
    /// [`ServerMsg::Recalled`].
    Recall {
        /// Request id.
        req: ReqId,
        /// The message or clip.
        id: ClipId,
    },
}

/// Someone the user may know.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suggestion {
    /// Login name.
    pub user: String,
    /// Display name.
    pub display: Option<String>,
    /// Contacts they share with the user plus channels they share.
    pub mutual: u32,
}

/// Someone nearby.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NearbyEntry {
    /// Login name.
    pub user: String,
    /// Display name.
    pub display: Option<String>,
    /// Distance between the two cells' centres, whole kilometres.
    pub km: u32,
}

/// Bytes of an avatar sent in one [`ClientMsg::SetAvatar`] part.
pub const AVATAR_PART: usize = 12 * 1024;

/// One of a user's devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Its id (`main` for the first).
    pub id: String,
    /// Its name.
    pub name: String,
    /// When it was linked (0 for the first, which the account was made with).
    pub created_ms: i64,
    /// Connected now (to this relay).
    pub online: bool,
    /// The device asking.
    pub this: bool,
}

/// Most names one [`ClientMsg::Profiles`] may ask about.
pub const MAX_PROFILES: usize = 256;

/// What anyone signed in to the relay may see of a user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicProfile {
    /// Login name.
    pub user: String,
    /// Display name, if they set one.
    pub display: Option<String>,
    /// A tag that changes with their avatar (ask for it with [`ClientMsg::Avatar`]), if they
    /// have one.
    pub avatar: Option<String>,
}

/// One person in a user's contacts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactEntry {
    /// Login name.
    pub user: String,
    /// Their display name.
    pub display: Option<String>,
    /// How the user stands towards them; `None` when there is no relation (after remove).
    pub state: Option<ContactState>,
    /// Online now (told for contacts only).
    pub online: bool,
}

/// A channel as its members see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The channel's name (the address clips go to).
    pub name: String,
    /// Its title, if its owner gave it one.
    pub title: Option<String>,
    /// The user who made it; `None` for a channel the administrator made.
    pub owner: Option<String>,
    /// Members, sorted.
    pub members: Vec<String>,
}

/// Messages the relay sends on a control stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// The hello was accepted.
    Welcome {
        /// The authenticated user.
        user: String,
        /// Relay software version.
        relay_version: String,
        /// Longest clip the relay accepts, in milliseconds.
        max_clip_ms: u32,
    },
    /// A clip the client sent is durable (or was already stored: `duplicate`).
    ClipStored {
        /// The clip.
        id: ClipId,
        /// Its storage sequence number.
        seq: u64,
        /// True when this id had been stored before (a retry).
        duplicate: bool,
    },
    /// A history page.
    History {
        /// The request it answers.
        req: ReqId,
        /// Clips, oldest first.
        clips: Vec<ClipMeta>,
    },
    /// A request, a clip or the session failed.
    Error(ErrorMsg),
    /// Reply to [`ClientMsg::Ping`].
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// Who among the people you share a channel with, and your contacts, is online (sent after
    /// the welcome).
    Online {
        /// User names, sorted.
        users: Vec<String>,
    },
    /// People you share a channel with, or contacts, who came online or went offline since
    /// the last of these (the relay batches them, at most one every 250 ms per channel; a
    /// long batch comes as several messages). May name you: skip your own name.
    Presence {
        /// Came online.
        online: Vec<String>,
        /// Went offline.
        offline: Vec<String>,
    },
    /// A recipient played one of your clips.
    PlayedBy {
        /// Your clip.
        id: ClipId,
        /// Who played it.
        user: String,
    },
    /// The channels you are a member of (sent once after the welcome, and again whenever
    /// they change), so a client can list them before any clip arrives.
    Channels {
        /// Channel names, sorted.
        channels: Vec<String>,
    },
    /// A [`ClientMsg::Join`] made an account: sign in with this name and token.
    Joined {
        /// The new user's login name.
        user: String,
        /// Their secret token (shown once).
        token: String,
        /// The channel the invite added them to.
        channel: Option<String>,
    },
    /// The user's own profile (answers [`ClientMsg::SetProfile`] and [`ClientMsg::SetAvatar`]).
    MyProfile {
        /// The request it answers.
        req: ReqId,
        /// Display name.
        display: Option<String>,
        /// Who may send direct clips.
        direct_from: DirectFrom,
        /// The avatar's tag, if there is one.
        avatar: Option<String>,
        /// Whether others may be suggested this user.
        suggest: bool,
    },
    /// A user's avatar (answers [`ClientMsg::Avatar`]): a PNG, or `None` if they have none or
    /// there is no such user.
    Avatar {
        /// The request it answers.
        req: ReqId,
        /// Whose.
        user: String,
        /// The PNG.
        png: Option<Vec<u8>>,
    },
    /// Public profiles (answers [`ClientMsg::Profiles`]).
    Profiles {
        /// The request it answers.
        req: ReqId,
        /// One per user found, in the order asked.
        profiles: Vec<PublicProfile>,
    },
    /// Contacts (answers [`ClientMsg::Contacts`] and [`ClientMsg::Contact`]).
    Contacts {
        /// The request it answers.
        req: ReqId,
        /// Sorted by login name.
        contacts: Vec<ContactEntry>,
    },
    /// Someone's relation to you changed (they asked, accepted or removed you).
    ContactChanged {
        /// Where you now stand with them.
        entry: ContactEntry,
    },
    /// Channels (answers [`ClientMsg::Groups`] and [`ClientMsg::Group`]).
    Groups {
        /// The request it answers.
        req: ReqId,
        /// Sorted by name.
        groups: Vec<GroupInfo>,
    },
    /// A device link code (answers [`ClientMsg::LinkDevice`]); the client makes the link with
    /// the relay's address and pin it knows.
    DeviceLink {
        /// The request it answers.
        req: ReqId,
        /// The one-time code.
        code: String,
        /// When it stops working, milliseconds since the Unix epoch.
        expires_ms: i64,
    },
    /// The user's devices (answers [`ClientMsg::Devices`] and [`ClientMsg::RemoveDevice`]).
    Devices {
        /// The request it answers.
        req: ReqId,
        /// The first device, then the others by id.
        devices: Vec<DeviceInfo>,
    },
    /// People the user may know, most mutual connections first (answers [`ClientMsg::Suggest`]).
    Suggestions {
        /// The request it answers.
        req: ReqId,
        /// At most 20.
        people: Vec<Suggestion>,
    },
    /// People nearby, nearest first (answers [`ClientMsg::Nearby`]).
    Nearby {
        /// The request it answers.
        req: ReqId,
        /// Within about 10 km.
        people: Vec<NearbyEntry>,
        /// Until when the user is visible (0 after stopping).
        until_ms: i64,
    },
    /// The message or clip was recalled (answers [`ClientMsg::Recall`]).
    Recalled {
        /// The request it answers.
        req: ReqId,
        /// The message or clip.
        id: ClipId,
    },
    /// To a talker whose clip starts going out live: the worst loss the relay measures on
    /// the way to the clip's listeners at this relay, in permille (0 to 1000; 0 when not
    /// measured yet). The talker tunes its encoder's in-band FEC to what this loss and its
    /// own leave after the datagrams' repeats ([`crate::live::Resilience`]). Once per clip.
    ListenersLoss {
        /// The clip.
        clip: ClipId,
        /// Loss in permille.
        permille: u16,
    },
}

/// An error reported to a peer: what failed, a stable code, and a sentence for humans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// The request that failed, if any.
    pub req: Option<ReqId>,
    /// The clip that failed, if any.
    pub clip: Option<ClipId>,
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// One clear sentence.
    pub message: String,
}

/// Stable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The message was malformed or not allowed at this point.
    BadRequest,
    /// Unknown user or wrong token.
    Unauthorized,
    /// Authenticated, but not allowed to read or write there.
    Forbidden,
    /// No such channel, user or clip (or not visible to this user).
    NotFound,
    /// The clip is longer than the relay's maximum duration.
    TooLong,
    /// A frame, packet or clip is larger than allowed.
    TooLarge,
    /// The relay is overloaded or a rate limit was hit: try again later.
    Busy {
        /// How long to wait before retrying.
        retry_after_ms: u32,
    },
    /// Someone else is talking on the channel (the message names them).
    FloorTaken,
    /// The clip id is taken by another sender.
    Conflict,
    /// The relay could not store the clip.
    Storage,
    /// Nothing arrived for too long.
    Timeout,
    /// Something went wrong inside the relay.
    Internal,
    /// The talker cancelled the clip (Esc, slide-to-cancel): nothing is stored, and live
    /// listeners drop what they heard of it.
    Cancelled,
    /// The sender stores as much as the relay allows one user (its per-user quota); nothing
    /// more is accepted until older clips are deleted (retention, purge).
    QuotaExceeded,
}

impl ErrorCode {
    /// Short stable name used in messages and the CLI.
    pub fn name(&self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not-found",
            ErrorCode::TooLong => "too-long",
            ErrorCode::TooLarge => "too-large",
            ErrorCode::Busy { .. } => "busy",
            ErrorCode::FloorTaken => "floor-taken",
            ErrorCode::Conflict => "conflict",
            ErrorCode::Storage => "storage",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Internal => "internal",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::QuotaExceeded => "quota-exceeded",
        }
    }

    /// QUIC application error code used when a stream or connection is closed for this reason.
    pub fn quic_code(&self) -> u32 {
        match self {
            ErrorCode::BadRequest => 1,
            ErrorCode::Unauthorized => 2,
            ErrorCode::Forbidden => 3,
            ErrorCode::NotFound => 4,
            ErrorCode::TooLong => 5,
            ErrorCode::TooLarge => 6,
            ErrorCode::Busy { .. } => 7,
            ErrorCode::Conflict => 8,
            ErrorCode::Storage => 9,
            ErrorCode::Timeout => 10,
            ErrorCode::Internal => 11,
            ErrorCode::FloorTaken => 12,
            ErrorCode::Cancelled => 13,
            ErrorCode::QuotaExceeded => 14,
        }
    }
}

/// How a delivered clip reaches a recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverHeader {
    /// The clip.
    pub id: ClipId,
    /// Sender.
    pub from: String,
    /// Channel or user it was sent to.
    pub to: Target,
    /// Wall-clock start, milliseconds since the Unix epoch.
    pub started_at_ms: i64,
    /// Codec parameters of the packets.
    pub codec: CodecParams,
    /// True while the talker is still talking; the end marker follows once it is stored.
    pub live: bool,
    /// Storage sequence number (0 for a live clip not yet stored).
    pub seq: u64,
    /// Voice (Opus packets follow) or a message's kind (its payload follows in chunks).
    pub content: crate::message::Content,
}

/// Frames of a unidirectional stream: a clip upload, a clip delivery or a fetched file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamFrame {
    /// Client to relay: a new clip follows.
    Upload(ClipHeader),
    /// Relay to client: a clip follows (live or from the inbox).
    Deliver(DeliverHeader),
    /// Relay to client: the Ogg Opus file asked for by a fetch follows in chunks.
    File {
        /// The fetch request this answers.
        req: ReqId,
        /// The clip's metadata.
        meta: ClipMeta,
    },
    /// One Opus packet. (As a byte string: postcard writes the same bytes as for a sequence
    /// of `u8`, a length then the bytes, without a call per byte.)
    Packet(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A piece of a file.
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The clip is complete: how many packets were sent and the decoded length in 48 kHz
    /// samples (after pre-skip, before which the decoder output is discarded).
    End {
        /// Packets sent.
        packets: u32,
        /// Decoded length in 48 kHz samples.
        samples: u64,
    },
    /// The clip was abandoned (refused, cancelled, or the talker vanished); discard it.
    Abort(ErrorMsg),
    /// Client to relay: a message (text, picture, doodle) follows in chunks, then the end
    /// marker with the chunk count.
    Message(crate::message::MessageHeader),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{Content, Kind, MessageHeader, PictureFormat};
    use crate::wire::{MAX_CONTROL_FRAME, decode_frame, encode_frame};
    use proptest::prelude::*;

    fn arb_name() -> impl Strategy<Value = String> {
        "[a-z0-9][a-z0-9._-]{0,31}"
    }

    /// The frames before packets were byte strings: a packet as a sequence of `u8`.
    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum AsSequence {
        Upload(ClipHeader),
        Deliver(DeliverHeader),
        File { req: ReqId, meta: ClipMeta },
        Packet(Vec<u8>),
        Chunk(Vec<u8>),
    }

    proptest! {
        /// Packets and chunks as byte strings put the same bytes on the wire as the sequence
        /// of `u8` they were, both ways: no protocol version needed for the change.
        #[test]
        fn byte_strings_are_wire_compatible(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            for (new, old) in [
                (StreamFrame::Packet(bytes.clone()), AsSequence::Packet(bytes.clone())),
                (StreamFrame::Chunk(bytes.clone()), AsSequence::Chunk(bytes.clone())),
            ] {
                let (a, b) = (postcard::to_stdvec(&new).unwrap(), postcard::to_stdvec(&old).unwrap());
                prop_assert_eq!(&a, &b);
                prop_assert_eq!(postcard::from_bytes::<StreamFrame>(&b).unwrap(), new);
                prop_assert_eq!(postcard::from_bytes::<AsSequence>(&a).unwrap(), old);
            }
        }
    }
    fn arb_id() -> impl Strategy<Value = ClipId> {
        any::<[u8; 16]>().prop_map(ClipId)
    }
    fn arb_target() -> impl Strategy<Value = Target> {
        prop_oneof![
            arb_name().prop_map(Target::Channel),
            arb_name().prop_map(Target::User)
        ]
    }
    fn arb_codec() -> impl Strategy<Value = CodecParams> {
        (any::<u32>(), any::<u32>(), any::<u16>()).prop_map(|(frame_samples, bitrate, pre_skip)| {
            CodecParams {
                frame_samples,
                bitrate,
                pre_skip,
            }
        })
    }
    fn arb_content() -> impl Strategy<Value = Content> {
        prop_oneof![
            Just(Content::Voice),
            Just(Content::Recalled),
            any::<u32>().prop_map(|chars| Content::Text { chars }),
            (any::<u32>(), any::<u32>(), any::<bool>(), any::<u32>()).prop_map(
                |(width, height, png, thumb)| Content::Picture {
                    width,
                    height,
                    format: if png {
                        PictureFormat::Png
                    } else {
                        PictureFormat::Jpeg
                    },
                    thumb
                }
            ),
            (
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>(),
                any::<u32>()
            )
                .prop_map(|(width, height, strokes, points, png)| Content::Doodle {
                    width,
                    height,
                    strokes,
                    points,
                    png
                }),
        ]
    }
    fn arb_meta() -> impl Strategy<Value = ClipMeta> {
        (
            arb_id(),
            arb_name(),
            arb_target(),
            any::<i64>(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            arb_codec(),
            any::<u64>(),
            arb_content(),
        )
            .prop_map(
                |(
                    id,
                    from,
                    to,
                    started_at_ms,
                    duration_ms,
                    packets,
                    bytes,
                    codec,
                    seq,
                    content,
                )| ClipMeta {
                    id,
                    from,
                    to,
                    started_at_ms,
                    duration_ms,
                    packets,
                    bytes,
                    codec,
                    seq,
                    content,
                },
            )
    }
    fn arb_code() -> impl Strategy<Value = ErrorCode> {
        prop_oneof![
            Just(ErrorCode::BadRequest),
            Just(ErrorCode::Unauthorized),
            Just(ErrorCode::Forbidden),
            Just(ErrorCode::NotFound),
            Just(ErrorCode::TooLong),
            Just(ErrorCode::TooLarge),
            any::<u32>().prop_map(|retry_after_ms| ErrorCode::Busy { retry_after_ms }),
            Just(ErrorCode::FloorTaken),
            Just(ErrorCode::Conflict),
            Just(ErrorCode::Storage),
            Just(ErrorCode::Timeout),
            Just(ErrorCode::Internal),
            Just(ErrorCode::Cancelled),
            Just(ErrorCode::QuotaExceeded),
        ]
    }
    fn arb_error() -> impl Strategy<Value = ErrorMsg> {
        (
            proptest::option::of(any::<u64>()),
            proptest::option::of(arb_id()),
            arb_code(),
            ".{0,80}",
        )
            .prop_map(|(req, clip, code, message)| ErrorMsg {
                req,
                clip,
                code,
                message,
            })
    }
    fn arb_client() -> impl Strategy<Value = ClientMsg> {
        prop_oneof![
            (arb_name(), "[0-9a-f]{0,64}", ".{0,20}").prop_map(|(user, token, client)| {
                ClientMsg::Hello {
                    user,
                    token,
                    client,
                }
            }),
            (
                any::<u64>(),
                proptest::option::of(arb_target()),
                any::<u32>(),
                proptest::option::of(any::<u64>())
            )
                .prop_map(|(req, target, limit, before_seq)| ClientMsg::History {
                    req,
                    target,
                    limit,
                    before_seq
                }),
            (any::<u64>(), arb_id()).prop_map(|(req, id)| ClientMsg::Fetch { req, id }),
            arb_id().prop_map(|id| ClientMsg::Ack { id }),
            any::<u64>().prop_map(|nonce| ClientMsg::Ping { nonce }),
            arb_id().prop_map(|id| ClientMsg::Played { id }),
            (
                proptest::option::of("[0-9a-f]{32}"),
                arb_name(),
                proptest::option::of(".{0,20}"),
                ".{0,10}"
            )
                .prop_map(|(code, name, display, client)| ClientMsg::Join {
                    code,
                    name,
                    display,
                    client
                }),
            (
                any::<u64>(),
                proptest::option::of(".{0,20}"),
                proptest::option::of(arb_direct()),
                proptest::option::of(any::<bool>())
            )
                .prop_map(|(req, display, direct_from, suggest)| {
                    ClientMsg::SetProfile {
                        req,
                        display,
                        direct_from,
                        suggest,
                    }
                }),
            (any::<u64>(), proptest::collection::vec(arb_name(), 0..4))
                .prop_map(|(req, users)| ClientMsg::Profiles { req, users }),
            (any::<u64>(), arb_name(), arb_action())
                .prop_map(|(req, user, action)| ClientMsg::Contact { req, user, action }),
            any::<u64>().prop_map(|req| ClientMsg::Contacts { req }),
            (any::<u64>(), arb_name(), arb_group_action()).prop_map(|(req, channel, action)| {
                ClientMsg::Group {
                    req,
                    channel,
                    action,
                }
            }),
            any::<u64>().prop_map(|req| ClientMsg::Groups { req }),
            any::<u64>().prop_map(|req| ClientMsg::LinkDevice { req }),
            any::<u64>().prop_map(|req| ClientMsg::Devices { req }),
            (any::<u64>(), "[0-9a-f]{8}").prop_map(|(req, id)| ClientMsg::RemoveDevice { req, id }),
            (
                any::<u64>(),
                any::<u32>(),
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..40)
            )
                .prop_map(|(req, offset, total, bytes)| ClientMsg::SetAvatar {
                    req,
                    offset,
                    total,
                    bytes
                }),
            (any::<u64>(), arb_name(), any::<bool>())
                .prop_map(|(req, user, small)| ClientMsg::Avatar { req, user, small }),
            any::<u64>().prop_map(|req| ClientMsg::Suggest { req }),
            (any::<u64>(), proptest::option::of("[0-9b-z]{5}"))
                .prop_map(|(req, cell)| ClientMsg::Nearby { req, cell }),
            (any::<u64>(), arb_id()).prop_map(|(req, id)| ClientMsg::Recall { req, id }),
        ]
    }
    fn arb_direct() -> impl Strategy<Value = DirectFrom> {
        prop_oneof![Just(DirectFrom::Anyone), Just(DirectFrom::Contacts)]
    }
    fn arb_action() -> impl Strategy<Value = ContactAction> {
        prop_oneof![
            Just(ContactAction::Add),
            Just(ContactAction::Accept),
            Just(ContactAction::Remove),
            Just(ContactAction::Block)
        ]
    }
    fn arb_state() -> impl Strategy<Value = ContactState> {
        prop_oneof![
            Just(ContactState::Requested),
            Just(ContactState::Incoming),
            Just(ContactState::Contact),
            Just(ContactState::Blocked)
        ]
    }
    fn arb_group_action() -> impl Strategy<Value = GroupAction> {
        prop_oneof![
            proptest::collection::vec(arb_name(), 0..3)
                .prop_map(|members| GroupAction::Create { members }),
            arb_name().prop_map(|user| GroupAction::Invite { user }),
            Just(GroupAction::Leave),
            ".{0,20}".prop_map(|title| GroupAction::Rename { title }),
            Just(GroupAction::Delete),
        ]
    }
    fn arb_entry() -> impl Strategy<Value = ContactEntry> {
        (
            arb_name(),
            proptest::option::of(".{0,20}"),
            proptest::option::of(arb_state()),
            any::<bool>(),
        )
            .prop_map(|(user, display, state, online)| ContactEntry {
                user,
                display,
                state,
                online,
            })
    }
    fn arb_server() -> impl Strategy<Value = ServerMsg> {
        prop_oneof![
            (arb_name(), ".{0,10}", any::<u32>()).prop_map(|(user, relay_version, max_clip_ms)| {
                ServerMsg::Welcome {
                    user,
                    relay_version,
                    max_clip_ms,
                }
            }),
            (arb_id(), any::<u64>(), any::<bool>())
                .prop_map(|(id, seq, duplicate)| ServerMsg::ClipStored { id, seq, duplicate }),
            (any::<u64>(), proptest::collection::vec(arb_meta(), 0..5))
                .prop_map(|(req, clips)| ServerMsg::History { req, clips }),
            arb_error().prop_map(ServerMsg::Error),
            any::<u64>().prop_map(|nonce| ServerMsg::Pong { nonce }),
            proptest::collection::vec(arb_name(), 0..4)
                .prop_map(|users| ServerMsg::Online { users }),
            (
                proptest::collection::vec(arb_name(), 0..4),
                proptest::collection::vec(arb_name(), 0..4)
            )
                .prop_map(|(online, offline)| ServerMsg::Presence { online, offline }),
            (arb_id(), arb_name()).prop_map(|(id, user)| ServerMsg::PlayedBy { id, user }),
            proptest::collection::vec(arb_name(), 0..4)
                .prop_map(|channels| ServerMsg::Channels { channels }),
            (arb_name(), "[0-9a-f]{64}", proptest::option::of(arb_name())).prop_map(
                |(user, token, channel)| ServerMsg::Joined {
                    user,
                    token,
                    channel
                }
            ),
            (
                any::<u64>(),
                proptest::option::of(".{0,20}"),
                arb_direct(),
                proptest::option::of("[0-9a-f]{16}"),
                any::<bool>()
            )
                .prop_map(|(req, display, direct_from, avatar, suggest)| {
                    ServerMsg::MyProfile {
                        req,
                        display,
                        direct_from,
                        avatar,
                        suggest,
                    }
                }),
            (
                any::<u64>(),
                proptest::collection::vec(
                    (arb_name(), proptest::option::of(".{0,10}"), any::<u32>()),
                    0..3
                )
            )
                .prop_map(|(req, p)| ServerMsg::Suggestions {
                    req,
                    people: p
                        .into_iter()
                        .map(|(user, display, mutual)| Suggestion {
                            user,
                            display,
                            mutual
                        })
                        .collect()
                }),
            (
                any::<u64>(),
                proptest::collection::vec(
                    (arb_name(), proptest::option::of(".{0,10}"), any::<u32>()),
                    0..3
                ),
                any::<i64>()
            )
                .prop_map(|(req, p, until_ms)| ServerMsg::Nearby {
                    req,
                    people: p
                        .into_iter()
                        .map(|(user, display, km)| NearbyEntry { user, display, km })
                        .collect(),
                    until_ms
                }),
            (any::<u64>(), arb_id()).prop_map(|(req, id)| ServerMsg::Recalled { req, id }),
            (arb_id(), 0u16..=1000)
                .prop_map(|(clip, permille)| ServerMsg::ListenersLoss { clip, permille }),
            (
                any::<u64>(),
                proptest::collection::vec(
                    (
                        arb_name(),
                        proptest::option::of(".{0,20}"),
                        proptest::option::of("[0-9a-f]{16}")
                    ),
                    0..3
                )
            )
                .prop_map(|(req, p)| ServerMsg::Profiles {
                    req,
                    profiles: p
                        .into_iter()
                        .map(|(user, display, avatar)| PublicProfile {
                            user,
                            display,
                            avatar
                        })
                        .collect()
                }),
            (
                any::<u64>(),
                arb_name(),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40))
            )
                .prop_map(|(req, user, png)| ServerMsg::Avatar { req, user, png }),
            (any::<u64>(), proptest::collection::vec(arb_entry(), 0..3))
                .prop_map(|(req, contacts)| ServerMsg::Contacts { req, contacts }),
            arb_entry().prop_map(|entry| ServerMsg::ContactChanged { entry }),
            (
                any::<u64>(),
                proptest::collection::vec(
                    (
                        arb_name(),
                        proptest::option::of(".{0,10}"),
                        proptest::option::of(arb_name()),
                        proptest::collection::vec(arb_name(), 0..3)
                    ),
                    0..3
                )
            )
                .prop_map(|(req, g)| ServerMsg::Groups {
                    req,
                    groups: g
                        .into_iter()
                        .map(|(name, title, owner, members)| GroupInfo {
                            name,
                            title,
                            owner,
                            members
                        })
                        .collect()
                }),
            (any::<u64>(), "[0-9a-f]{32}", any::<i64>()).prop_map(|(req, code, expires_ms)| {
                ServerMsg::DeviceLink {
                    req,
                    code,
                    expires_ms,
                }
            }),
            (
                any::<u64>(),
                proptest::collection::vec(
                    (
                        "[0-9a-f]{8}",
                        ".{0,10}",
                        any::<i64>(),
                        any::<bool>(),
                        any::<bool>()
                    ),
                    0..3
                )
            )
                .prop_map(|(req, d)| ServerMsg::Devices {
                    req,
                    devices: d
                        .into_iter()
                        .map(|(id, name, created_ms, online, this)| DeviceInfo {
                            id,
                            name,
                            created_ms,
                            online,
                            this
                        })
                        .collect()
                }),
        ]
    }
    fn arb_stream() -> impl Strategy<Value = StreamFrame> {
        prop_oneof![
            (arb_id(), arb_target(), any::<i64>(), arb_codec()).prop_map(
                |(id, to, started_at_ms, codec)| StreamFrame::Upload(ClipHeader {
                    id,
                    to,
                    started_at_ms,
                    codec
                })
            ),
            (
                arb_id(),
                arb_name(),
                arb_target(),
                any::<i64>(),
                arb_codec(),
                any::<bool>(),
                any::<u64>(),
                arb_content()
            )
                .prop_map(
                    |(id, from, to, started_at_ms, codec, live, seq, content)| StreamFrame::Deliver(
                        DeliverHeader {
                            id,
                            from,
                            to,
                            started_at_ms,
                            codec,
                            live,
                            seq,
                            content,
                        }
                    )
                ),
            (
                arb_id(),
                arb_target(),
                prop_oneof![Just(Kind::Text), Just(Kind::Picture), Just(Kind::Doodle)]
            )
                .prop_map(|(id, to, kind)| StreamFrame::Message(MessageHeader {
                    id,
                    to,
                    kind
                })),
            (any::<u64>(), arb_meta()).prop_map(|(req, meta)| StreamFrame::File { req, meta }),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(StreamFrame::Packet),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(StreamFrame::Chunk),
            (any::<u32>(), any::<u64>())
                .prop_map(|(packets, samples)| StreamFrame::End { packets, samples }),
            arb_error().prop_map(StreamFrame::Abort),
        ]
    }

    fn roundtrip<T>(msg: &T)
    where
        T: Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let bytes = encode_frame(msg, MAX_CONTROL_FRAME).expect("encodes");
        let (back, used) = decode_frame::<T>(&bytes, MAX_CONTROL_FRAME)
            .expect("decodes")
            .expect("complete");
        assert_eq!(&back, msg);
        assert_eq!(used, bytes.len());
        // Every strict prefix is incomplete, never an error or a wrong message.
        for cut in [0, 1, 3, bytes.len() / 2, bytes.len() - 1] {
            assert_eq!(
                decode_frame::<T>(&bytes[..cut], MAX_CONTROL_FRAME),
                Ok(None)
            );
        }
    }

    proptest! {
        #[test]
        fn client_messages_roundtrip(msg in arb_client()) { roundtrip(&msg); }
        #[test]
        fn server_messages_roundtrip(msg in arb_server()) { roundtrip(&msg); }
        #[test]
        fn stream_frames_roundtrip(msg in arb_stream()) { roundtrip(&msg); }
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_frame::<ClientMsg>(&bytes, MAX_CONTROL_FRAME);
            let _ = decode_frame::<ServerMsg>(&bytes, MAX_CONTROL_FRAME);
            let _ = decode_frame::<StreamFrame>(&bytes, MAX_CONTROL_FRAME);
        }
    }

    #[test]
    fn huge_length_is_refused_before_allocation() {
        let bytes = [0xff, 0xff, 0xff, 0xff, 0, 0];
        assert_eq!(
            decode_frame::<ClientMsg>(&bytes, MAX_CONTROL_FRAME),
            Err(crate::wire::FrameError::TooLarge {
                len: u32::MAX as usize,
                cap: MAX_CONTROL_FRAME
            })
        );
    }

    #[test]
    fn oversize_message_is_refused_when_encoding() {
        let big = StreamFrame::Packet(vec![0; 100]);
        assert!(matches!(
            encode_frame(&big, 50),
            Err(crate::wire::FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut bytes = encode_frame(&ClientMsg::Ping { nonce: 7 }, 64).expect("encodes");
        bytes.push(0);
        let len = (bytes.len() - 4) as u32;
        bytes[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            decode_frame::<ClientMsg>(&bytes, 64),
            Err(crate::wire::FrameError::Malformed(_))
        ));
    }

    #[test]
    fn ping_has_a_fixed_encoding() {
        // Snapshot: a change here breaks every deployed peer; bump the ALPN version instead.
        let bytes = encode_frame(&ClientMsg::Ping { nonce: 300 }, 64).expect("encodes");
        assert_eq!(bytes, vec![0, 0, 0, 3, 4, 0xac, 0x02]);
    }
}
