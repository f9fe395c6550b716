//! People on this relay, kept in the store's records: invites (under the hash of their code),
//! each user's profile and contacts, and who owns the channels users made. The rules are
//! [`walkie_proto::people`]'s; this module reads and writes the records they apply to, with
//! compare-and-set so that two relays (or a relay and an admin command) never lose a write.
//! Functions are synchronous over a [`Store`]: the admin command line calls them directly,
//! the relay inside `Shared::store`.
//!
//! | record key | value |
//! |---|---|
//! | `invite.SHA256(CODE)` | [`Invite`] |
//! | `person.NAME` | [`Person`]: display name, who may send direct clips, contacts, who blocked them |
//! | `group.CHANNEL` | [`Group`]: owner and title of a channel a user made |
//! | `devices.NAME` | [`Devices`]: a user's other devices, each with its own token and inbox |
//! | `played.NAME` | the clips a user with several devices played lately, for the others |
//! | `avatar.NAME.256`, `avatar.NAME.64` | their avatar, PNG bytes as the relay encoded them |
//! | `nearby.CELL4.NAME` | [`NearbySpot`]: the 5-character cell a user is visible in, until when |
//! | `nearby-of.NAME` | [`NearbyOf`]: where that is, and when they last moved (moves are limited) |

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::Digest;
use walkie_proto::clip::{validate_name, validate_user_name};
use walkie_proto::people::{
    self, ContactAction, ContactState, DirectFrom, GroupAction, GroupRole, Invite, InviteRefusal,
    Pair, contact_step, group_may,
};
use walkie_proto::wire::{
    ContactEntry, ErrorCode, GroupInfo, NearbyEntry, PublicProfile, Suggestion,
};
use walkie_store::{Store, StoreError};

use crate::auth;

/// Most people one user may have in their contacts (requests and blocks included): bounds
/// the record, and so what one user can make the relay hold.
pub const MAX_CONTACTS: usize = 2000;

/// Most members a channel made by a user may start with.
pub const MAX_GROUP_MEMBERS: usize = 1000;

/// How many times a compare-and-set is retried when other writers keep getting in first.
const CAS_TRIES: usize = 32;

/// Why a people request failed: a refusal to tell the user, or the store failing.
#[derive(Debug, thiserror::Error)]
pub enum PeopleError {
    /// Refused, with the code and sentence for the client.
    #[error("{1}")]
    Refused(ErrorCode, String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn refused(code: ErrorCode, message: impl Into<String>) -> PeopleError {
    PeopleError::Refused(code, message.into())
}

/// A user's profile and relations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    /// Display name.
    #[serde(default)]
    pub display: Option<String>,
    /// Who may send them direct clips; `None` is the relay's default.
    #[serde(default)]
    pub direct_from: Option<DirectFrom>,
    /// How they stand towards each person they have to do with.
    #[serde(default)]
    pub contacts: BTreeMap<String, ContactState>,
    /// Who blocked them (never shown to them): their clips skip those users.
    #[serde(default)]
    pub blocked_by: BTreeSet<String>,
    /// A tag of their avatar (changes with it), if they have one.
    #[serde(default)]
    pub avatar: Option<String>,
    /// They turned suggestions off: nobody is suggested them.
    #[serde(default)]
    pub hidden: bool,
}

/// A channel a user made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Who owns it.
    pub owner: String,
    /// Its title, if any.
    #[serde(default)]
    pub title: Option<String>,
}

/// The invite key of a code: the code is never stored, only its SHA-256.
fn invite_key(code: &str) -> Vec<String> {
    vec![
        "invite".into(),
        hex::encode(sha2::Sha256::digest(code.as_bytes())),
    ]
}

fn key(kind: &str, name: &str) -> Vec<String> {
    vec![kind.to_string(), name.to_string()]
}

fn refs(key: &[String]) -> Vec<&str> {
    key.iter().map(String::as_str).collect()
}

fn corrupt(what: &str, e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

/// Reads a JSON record and its revision (0 when absent, with the default value).
fn read<T: serde::de::DeserializeOwned + Default>(
    store: &dyn Store,
    key: &[String],
) -> Result<(T, u64), StoreError> {
    match store.record(&refs(key))? {
        Some(r) => Ok((
            serde_json::from_slice(&r.value).map_err(|e| corrupt(&key.join("."), e))?,
            r.rev,
        )),
        None => Ok((T::default(), 0)),
    }
}

/// Reads a record that may be absent.
fn read_opt<T: serde::de::DeserializeOwned>(
    store: &dyn Store,
    key: &[String],
) -> Result<Option<(T, u64)>, StoreError> {
    match store.record(&refs(key))? {
        Some(r) => Ok(Some((
            serde_json::from_slice(&r.value).map_err(|e| corrupt(&key.join("."), e))?,
            r.rev,
        ))),
        None => Ok(None),
    }
}

fn write<T: Serialize>(
    store: &dyn Store,
    key: &[String],
    value: &T,
    rev: u64,
) -> Result<bool, StoreError> {
    let bytes = serde_json::to_vec(value).map_err(|e| corrupt(&key.join("."), e))?;
    Ok(store.put_record(&refs(key), &bytes, rev)?.is_some())
}

/// Changes a user's person record with `change` (read, change, compare-and-set, again if
/// another write got in first); returns what `change` returned.
fn update_person<T>(
    store: &dyn Store,
    user: &str,
    change: impl FnMut(&mut Person) -> Result<T, PeopleError>,
) -> Result<T, PeopleError> {
    update(
        store,
        &key("person", user),
        &format!("the profile of {user}"),
        change,
    )
}

/// Changes the JSON record under `key` (its default when absent) with `change`: read,
/// change, compare-and-set, again if another write got in first; nothing is written when
/// `change` leaves the value as it was. `what` names the record in the error after
/// [`CAS_TRIES`] lost races.
fn update<R, T>(
    store: &dyn Store,
    key: &[String],
    what: &str,
    mut change: impl FnMut(&mut R) -> Result<T, PeopleError>,
) -> Result<T, PeopleError>
where
    R: serde::de::DeserializeOwned + Serialize + Default + Clone + PartialEq,
{
    for _ in 0..CAS_TRIES {
        let (mut value, rev): (R, u64) = read(store, key)?;
        let before = value.clone();
        let out = change(&mut value)?;
        if value == before || write(store, key, &value, rev)? {
            return Ok(out);
        }
    }
    Err(StoreError::Backend(format!("{what} kept changing under this write; try again")).into())
}

/// A user's person record (the default when they have none yet).
pub fn person(store: &dyn Store, user: &str) -> Result<Person, StoreError> {
    Ok(read::<Person>(store, &key("person", user))?.0)
}

// ---- invites ----

/// Makes an invite and returns its code (shown once: only its hash is kept).
pub fn create_invite(store: &dyn Store, invite: &Invite) -> Result<String, PeopleError> {
    if invite.uses_left == 0 {
        return Err(refused(
            ErrorCode::BadRequest,
            "an invite needs at least one use",
        ));
    }
    if let Some(channel) = &invite.channel
        && store.members(channel)?.is_none()
    {
        return Err(refused(
            ErrorCode::NotFound,
            format!("there is no channel {channel:?}"),
        ));
    }
    let code = people::new_code();
    if !write(store, &invite_key(&code), invite, 0)? {
        return Err(StoreError::Backend(
            "a fresh invite code was already taken (try again)".into(),
        )
        .into());
    }
    Ok(code)
}

/// What a sign-up made.
#[derive(Debug, PartialEq, Eq)]
pub struct Joined {
    /// Who signed in: the new user, or for a device link the user who made it.
    pub user: String,
    /// The new token (shown once).
    pub token: String,
    /// The channel the invite added them to, if it named one that still exists.
    pub channel: Option<String>,
    /// For a device link: the new device's id.
    pub device: Option<String>,
}

/// Makes an account for `name` with an invite `code`, or without one when `open_signup`:
/// the name is checked first (so a taken name spends nothing), then one use of the invite
/// is spent, then the user is added (the use is given back if that fails), and the invite's
/// channel joined.
pub fn join(
    store: &dyn Store,
    code: Option<&str>,
    name: &str,
    display: Option<&str>,
    open_signup: bool,
    now_ms: i64,
) -> Result<Joined, PeopleError> {
    if let Some(code) = code
        && let Some((invite, _)) = read_opt::<Invite>(store, &invite_key(code))?
        && let Some(owner) = invite.device_of
    {
        return join_device(store, code, &owner, display, now_ms);
    }
    if name.is_empty() {
        return Err(refused(
            ErrorCode::BadRequest,
            "choose a login name for the new account (walkie join LINK --name NAME)",
        ));
    }
    validate_user_name(name).map_err(|e| refused(ErrorCode::BadRequest, e.to_string()))?;
    let display = display
        .map(people::validate_display_name)
        .transpose()
        .map_err(|e| refused(ErrorCode::BadRequest, e.to_string()))?;
    let name_taken = || {
        refused(
            ErrorCode::Conflict,
            format!("the name {name:?} is taken on this relay; choose another"),
        )
    };
    if store.token_hash(name)?.is_some() || store.has_history(name)? {
        return Err(name_taken());
    }
    let spent = match code {
        Some(code) => Some(spend_invite(store, code, now_ms)?),
        None if open_signup => None,
        None => {
            return Err(refused(
                ErrorCode::Unauthorized,
                "this relay takes new users by invite only: ask a member for an invite link",
            ));
        }
    };
    let token = auth::new_token();
    if let Err(e) = store.add_user(name, &auth::hash_token(&token)) {
        if let Some((code, _)) = &spent {
            give_back(store, code);
        }
        return Err(match e {
            StoreError::Exists { .. } => name_taken(),
            other => other.into(),
        });
    }
    if let Some(display) = display {
        update_person(store, name, |p| {
            p.display = Some(display.clone());
            Ok(())
        })?;
    }
    let channel = spent.and_then(|(_, invite)| invite.channel);
    let channel = match channel {
        Some(c) => match store.update_members(&c, &[name.to_string()], &[]) {
            Ok(_) => Some(c),
            // The channel was deleted since the invite was made: the account stands.
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => return Err(e.into()),
        },
        None => None,
    };
    Ok(Joined {
        user: name.to_string(),
        token,
        channel,
        device: None,
    })
}

/// Spends one use of the invite with this code; the code and the invite as it was.
fn spend_invite(
    store: &dyn Store,
    code: &str,
    now_ms: i64,
) -> Result<(String, Invite), PeopleError> {
    let k = invite_key(code);
    for _ in 0..CAS_TRIES {
        let Some((invite, rev)) = read_opt::<Invite>(store, &k)? else {
            return Err(refused(
                ErrorCode::Unauthorized,
                InviteRefusal::Unknown.to_string(),
            ));
        };
        let after = invite
            .redeem(now_ms)
            .map_err(|r| refused(ErrorCode::Unauthorized, r.to_string()))?;
        if write(store, &k, &after, rev)? {
            return Ok((code.to_string(), invite));
        }
    }
    Err(StoreError::Backend("the invite kept changing under this sign-up; try again".into()).into())
}

/// Returns a use to an invite whose sign-up failed after spending it (best effort).
fn give_back(store: &dyn Store, code: &str) {
    let k = invite_key(code);
    for _ in 0..CAS_TRIES {
        let Ok(Some((mut invite, rev))) = read_opt::<Invite>(store, &k) else {
            return;
        };
        invite.uses_left = invite.uses_left.saturating_add(1);
        if !matches!(write(store, &k, &invite, rev), Ok(false)) {
            return;
        }
    }
}

/// Deletes invites that expired before `now_ms`; how many.
pub fn sweep_invites(store: &dyn Store, now_ms: i64) -> Result<usize, StoreError> {
    let mut n = 0;
    for k in store.record_keys(&["invite"])? {
        if let Some((invite, _)) = read_opt::<Invite>(store, &k)?
            && invite.expires_ms <= now_ms
        {
            store.delete_record(&refs(&k))?;
            n += 1;
        }
    }
    Ok(n)
}

// ---- devices ----

/// Devices one user may have besides the first.
pub const MAX_DEVICES: usize = 8;
/// The id of a user's first device: the one whose token is the user's own.
pub const MAIN_DEVICE: &str = "main";
/// How long a device link works.
pub const DEVICE_LINK_MS: i64 = 10 * 60_000;

/// One of a user's other devices.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// SHA-256 of its token, hex.
    pub token_hash: String,
    /// What its owner called it.
    pub name: String,
    /// When it was linked.
    pub created_ms: i64,
}

/// A user's other devices by id.
pub type Devices = BTreeMap<String, Device>;

/// A user's other devices.
pub fn devices(store: &dyn Store, user: &str) -> Result<Devices, StoreError> {
    Ok(read::<Devices>(store, &key("devices", user))?.0)
}

/// The inbox a device of `user` is delivered from: the user's own for the first device.
pub fn inbox_key(user: &str, device: Option<&str>) -> String {
    match device {
        None => user.to_string(),
        Some(d) => format!("{user}/{d}"),
    }
}

/// Every inbox a clip for `user` is queued in: theirs and one per other device.
pub fn delivery_keys(store: &dyn Store, user: &str) -> Result<Vec<String>, StoreError> {
    let mut keys = vec![user.to_string()];
    keys.extend(
        devices(store, user)?
            .keys()
            .map(|d| inbox_key(user, Some(d))),
    );
    Ok(keys)
}

/// A one-time link code that signs another device in as `user` within [`DEVICE_LINK_MS`].
pub fn link_device(store: &dyn Store, user: &str, now_ms: i64) -> Result<String, PeopleError> {
    if devices(store, user)?.len() >= MAX_DEVICES {
        return Err(refused(
            ErrorCode::TooLarge,
            format!(
                "you have {} devices, the most this relay allows; remove one first",
                MAX_DEVICES + 1
            ),
        ));
    }
    let invite = Invite {
        uses_left: 1,
        expires_ms: now_ms + DEVICE_LINK_MS,
        channel: None,
        created_by: Some(user.to_string()),
        device_of: Some(user.to_string()),
    };
    create_invite(store, &invite)
}

fn join_device(
    store: &dyn Store,
    code: &str,
    owner: &str,
    name: Option<&str>,
    now_ms: i64,
) -> Result<Joined, PeopleError> {
    let name = match name {
        Some(n) => people::validate_display_name(n).map_err(|e| {
            refused(
                ErrorCode::BadRequest,
                e.to_string().replace("display name", "device name"),
            )
        })?,
        None => "device".to_string(),
    };
    if store.token_hash(owner)?.is_none() {
        return Err(refused(
            ErrorCode::Unauthorized,
            InviteRefusal::Unknown.to_string(),
        ));
    }
    spend_invite(store, code, now_ms)?;
    let token = auth::new_token();
    let id = hex::encode(rand::random::<[u8; 4]>());
    let device = Device {
        token_hash: hex::encode(auth::hash_token(&token)),
        name,
        created_ms: now_ms,
    };
    update(
        store,
        &key("devices", owner),
        "the device list",
        |all: &mut Devices| {
            if all.len() >= MAX_DEVICES {
                return Err(refused(
                    ErrorCode::TooLarge,
                    format!(
                        "{owner} has {} devices, the most this relay allows",
                        MAX_DEVICES + 1
                    ),
                ));
            }
            all.insert(id.clone(), device.clone());
            Ok(())
        },
    )?;
    Ok(Joined {
        user: owner.to_string(),
        token,
        channel: None,
        device: Some(id),
    })
}

/// Removes one of `user`'s other devices and empties its inbox; false if there is no such device.
pub fn remove_device(store: &dyn Store, user: &str, id: &str) -> Result<bool, PeopleError> {
    if id == MAIN_DEVICE {
        return Err(refused(
            ErrorCode::BadRequest,
            "the first device is the account itself: to lock it out, the administrator gives the user a new token (walkie-relay user token)",
        ));
    }
    let removed = update(
        store,
        &key("devices", user),
        "the device list",
        |all: &mut Devices| Ok(all.remove(id).is_some()),
    )?;
    if removed {
        store.clear_inbox(&inbox_key(user, Some(id)))?;
    }
    Ok(removed)
}

/// Which of `user`'s other devices `token` belongs to, with its hash.
pub fn device_for_token(
    store: &dyn Store,
    user: &str,
    token: &str,
) -> Result<Option<(String, walkie_store::TokenHash)>, StoreError> {
    for (id, d) in devices(store, user)? {
        let mut hash = [0u8; 32];
        if hex::decode_to_slice(&d.token_hash, &mut hash).is_ok()
            && auth::token_matches(token, &hash)
        {
            return Ok(Some((id, hash)));
        }
    }
    Ok(None)
}

/// Clips played lately by a user with several devices are remembered this many at a time.
const PLAYED_KEPT: usize = 512;

/// Remembers that `user` played `id` (for their other devices, which may get it later).
pub fn mark_played(store: &dyn Store, user: &str, id: &str) -> Result<(), PeopleError> {
    update(
        store,
        &key("played", user),
        "the played list",
        |ids: &mut std::collections::VecDeque<String>| {
            if !ids.iter().any(|i| i == id) {
                ids.push_back(id.to_string());
                while ids.len() > PLAYED_KEPT {
                    ids.pop_front();
                }
            }
            Ok(())
        },
    )
}

/// The clips `user` played lately (hex ids).
pub fn played(store: &dyn Store, user: &str) -> Result<BTreeSet<String>, StoreError> {
    Ok(
        read::<std::collections::VecDeque<String>>(store, &key("played", user))?
            .0
            .into_iter()
            .collect(),
    )
}

// ---- profiles ----

/// Sets the fields given of `user`'s profile; the profile after.
pub fn set_profile(
    store: &dyn Store,
    user: &str,
    display: Option<&str>,
    direct_from: Option<DirectFrom>,
) -> Result<Person, PeopleError> {
    set_profile_with(store, user, display, direct_from, None)
}

/// [`set_profile`], and whether others may be suggested the user.
pub fn set_profile_with(
    store: &dyn Store,
    user: &str,
    display: Option<&str>,
    direct_from: Option<DirectFrom>,
    suggest: Option<bool>,
) -> Result<Person, PeopleError> {
    let display = display
        .map(people::validate_display_name)
        .transpose()
        .map_err(|e| refused(ErrorCode::BadRequest, e.to_string()))?;
    update_person(store, user, |p| {
        if let Some(d) = &display {
            p.display = Some(d.clone());
        }
        if let Some(f) = direct_from {
            p.direct_from = Some(f);
        }
        if let Some(s) = suggest {
            p.hidden = !s;
        }
        Ok(p.clone())
    })
}

/// The public profiles of the users among `names` that exist, in order.
pub fn profiles(store: &dyn Store, names: &[String]) -> Result<Vec<PublicProfile>, StoreError> {
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if validate_name(name).is_err() || store.token_hash(name)?.is_none() {
            continue;
        }
        let p = person(store, name)?;
        out.push(PublicProfile {
            user: name.clone(),
            display: p.display,
            avatar: p.avatar,
        });
    }
    Ok(out)
}

/// Sets (`Some(png)`: a 256 px PNG from the client, checked and encoded again by
/// [`crate::avatar::accept`]) or removes `user`'s avatar; their profile after.
pub fn set_avatar(
    store: &dyn Store,
    user: &str,
    png: Option<&[u8]>,
) -> Result<Person, PeopleError> {
    let Some(png) = png else {
        store.delete_record(&["avatar", user, "256"])?;
        store.delete_record(&["avatar", user, "64"])?;
        return update_person(store, user, |p| {
            p.avatar = None;
            Ok(p.clone())
        });
    };
    let (large, small) =
        crate::avatar::accept(png).map_err(|e| refused(ErrorCode::BadRequest, e.to_string()))?;
    let tag = hex::encode(&sha2::Sha256::digest(&large)[..8]);
    put_raw(store, &["avatar", user, "256"], &large)?;
    put_raw(store, &["avatar", user, "64"], &small)?;
    update_person(store, user, |p| {
        p.avatar = Some(tag.clone());
        Ok(p.clone())
    })
}

/// Writes bytes under `key` whatever was there.
fn put_raw(store: &dyn Store, key: &[&str], bytes: &[u8]) -> Result<(), StoreError> {
    for _ in 0..CAS_TRIES {
        let rev = store.record(key)?.map_or(0, |r| r.rev);
        if store.put_record(key, bytes, rev)?.is_some() {
            return Ok(());
        }
    }
    Err(StoreError::Backend(
        "the avatar kept changing under this write; try again".into(),
    ))
}

/// A user's avatar PNG (64 px when `small`), if they have one.
pub fn avatar(store: &dyn Store, user: &str, small: bool) -> Result<Option<Vec<u8>>, StoreError> {
    if validate_name(user).is_err() {
        return Ok(None);
    }
    Ok(store
        .record(&["avatar", user, if small { "64" } else { "256" }])?
        .map(|r| r.value))
}

/// Removes what is kept about a user's person that others see: display name and avatar (purge).
pub fn clear_profile(store: &dyn Store, user: &str) -> Result<(), PeopleError> {
    set_avatar(store, user, None)?;
    update_person(store, user, |p| {
        p.display = None;
        Ok(())
    })
}

/// Forgets everything about a removed user: their record, their place in everyone's
/// contacts, and the channels they owned pass to another member (or are deleted when empty).
pub fn forget(store: &dyn Store, user: &str) -> Result<(), PeopleError> {
    let me = person(store, user)?;
    let others: BTreeSet<String> = me
        .contacts
        .keys()
        .chain(me.blocked_by.iter())
        .cloned()
        .collect();
    for other in others {
        update_person(store, &other, |p| {
            p.contacts.remove(user);
            p.blocked_by.remove(user);
            Ok(())
        })?;
    }
    store.delete_record(&["person", user])?;
    for id in devices(store, user)?.keys() {
        store.clear_inbox(&inbox_key(user, Some(id)))?;
    }
    store.delete_record(&["devices", user])?;
    store.delete_record(&["played", user])?;
    store.delete_record(&["avatar", user, "256"])?;
    store.delete_record(&["avatar", user, "64"])?;
    nearby(store, user, None, 0)?;
    store.delete_record(&["nearby-of", user])?;
    for k in store.record_keys(&["group"])? {
        let Some(channel) = k.get(1).cloned() else {
            continue;
        };
        let gk = key("group", &channel);
        if let Some((group, rev)) = read_opt::<Group>(store, &gk)?
            && group.owner == user
        {
            pass_on(store, &channel, group, rev)?;
        }
    }
    Ok(())
}

// ---- contacts ----

/// Does `action` about `other`; `actor`'s entry for them afterwards.
pub fn contact(
    store: &dyn Store,
    actor: &str,
    other: &str,
    action: ContactAction,
) -> Result<Pair, PeopleError> {
    if actor == other {
        return Err(refused(
            ErrorCode::BadRequest,
            "you cannot be your own contact",
        ));
    }
    if validate_name(other).is_err() || store.token_hash(other)?.is_none() {
        return Err(refused(
            ErrorCode::NotFound,
            format!("there is no user @{other}"),
        ));
    }
    let theirs_now = person(store, other)?.contacts.get(actor).copied();
    // The actor's side first, from the other's side as read; then the other's side from what
    // the actor's side became (a write in between on their side is re-read there).
    let pair = update_person(store, actor, |me| {
        let pair = contact_step(
            action,
            Pair {
                mine: me.contacts.get(other).copied(),
                theirs: theirs_now,
            },
        )
        .map_err(|e| refused(ErrorCode::BadRequest, format!("{e} (@{other})")))?;
        if pair.mine.is_some()
            && !me.contacts.contains_key(other)
            && me.contacts.len() >= MAX_CONTACTS
        {
            return Err(refused(
                ErrorCode::TooLarge,
                format!(
                    "you have {MAX_CONTACTS} people in your contacts, the most this relay keeps; remove some first"
                ),
            ));
        }
        set(&mut me.contacts, other, pair.mine);
        Ok(pair)
    })?;
    update_person(store, other, |them| {
        let was_blocked = them.contacts.get(actor) == Some(&ContactState::Blocked);
        if !was_blocked {
            // A full contacts list takes no new requests; its owner sees nothing of them.
            let full = them.contacts.len() >= MAX_CONTACTS && !them.contacts.contains_key(actor);
            if !(full && pair.theirs == Some(ContactState::Incoming)) {
                set(&mut them.contacts, actor, pair.theirs);
            }
        }
        // Who blocked whom is kept on the blocked side too, for their clips to skip the blocker.
        if pair.mine == Some(ContactState::Blocked) {
            them.blocked_by.insert(actor.to_string());
        } else {
            them.blocked_by.remove(actor);
        }
        Ok(())
    })?;
    Ok(pair)
}

fn set(map: &mut BTreeMap<String, ContactState>, name: &str, state: Option<ContactState>) {
    match state {
        Some(s) => {
            map.insert(name.to_string(), s);
        }
        None => {
            map.remove(name);
        }
    }
}

/// A user's contacts as entries (presence is filled in by the caller), sorted by name.
pub fn contacts(store: &dyn Store, user: &str) -> Result<Vec<ContactEntry>, StoreError> {
    let me = person(store, user)?;
    let mut out = Vec::with_capacity(me.contacts.len());
    for (name, state) in me.contacts {
        let display = person(store, &name)?.display;
        out.push(ContactEntry {
            user: name,
            display,
            state: Some(state),
            online: false,
        });
    }
    Ok(out)
}

/// Whether `recipient` takes direct clips from `sender` (their choice, or the relay's default).
pub fn may_send_direct(
    store: &dyn Store,
    sender: &str,
    recipient: &str,
    default: DirectFrom,
) -> Result<bool, StoreError> {
    let them = person(store, recipient)?;
    Ok(people::may_send_direct(
        them.contacts.get(sender).copied(),
        them.direct_from.unwrap_or(default),
    ))
}

/// The users who blocked `sender` (their channel clips skip them).
pub fn blocked_by(store: &dyn Store, sender: &str) -> Result<BTreeSet<String>, StoreError> {
    Ok(person(store, sender)?.blocked_by)
}

// ---- groups ----

/// Who may make channels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelCreate {
    /// Every user (the default).
    #[default]
    Anyone,
    /// Only the administrator, with `walkie-relay channel add`.
    Admins,
}

/// What a group action changed, for the relay to tell the people concerned.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GroupChange {
    /// The channel as it stands, `None` once it is deleted or the actor left.
    pub info: Option<GroupInfo>,
    /// Users whose channel list changed.
    pub affected: Vec<String>,
}

/// The channel as its members see it.
pub fn group_info(store: &dyn Store, channel: &str) -> Result<Option<GroupInfo>, StoreError> {
    let Some(members) = store.members(channel)? else {
        return Ok(None);
    };
    let group = read_opt::<Group>(store, &key("group", channel))?.map(|(g, _)| g);
    Ok(Some(GroupInfo {
        name: channel.to_string(),
        title: group.as_ref().and_then(|g| g.title.clone()),
        owner: group.map(|g| g.owner),
        members,
    }))
}

/// The channels `user` is a member of, sorted by name.
pub fn groups_of(store: &dyn Store, user: &str) -> Result<Vec<GroupInfo>, StoreError> {
    let mut out = Vec::new();
    for c in store.channels()? {
        if c.members.iter().any(|m| m == user)
            && let Some(info) = group_info(store, &c.name)?
        {
            out.push(info);
        }
    }
    Ok(out)
}

/// Whether `actor` may add `user` to a channel: the same rule as sending them a direct clip.
fn may_add(
    store: &dyn Store,
    actor: &str,
    user: &str,
    default: DirectFrom,
) -> Result<(), PeopleError> {
    if validate_name(user).is_err() || store.token_hash(user)?.is_none() {
        return Err(refused(
            ErrorCode::NotFound,
            format!("there is no user @{user}"),
        ));
    }
    if !may_send_direct(store, actor, user, default)? {
        return Err(refused(
            ErrorCode::Forbidden,
            format!("@{user} takes invitations from their contacts only"),
        ));
    }
    Ok(())
}

/// Does `action` to `channel` for `actor`.
pub fn group(
    store: &dyn Store,
    actor: &str,
    channel: &str,
    action: &GroupAction,
    create: ChannelCreate,
    default: DirectFrom,
) -> Result<GroupChange, PeopleError> {
    validate_name(channel).map_err(|e| refused(ErrorCode::BadRequest, e.to_string()))?;
    if let GroupAction::Create { members } = action {
        if create == ChannelCreate::Admins {
            return Err(refused(
                ErrorCode::Forbidden,
                "on this relay only the administrator makes channels",
            ));
        }
        if members.len() > MAX_GROUP_MEMBERS {
            return Err(refused(
                ErrorCode::TooLarge,
                format!("a new channel has at most {MAX_GROUP_MEMBERS} members"),
            ));
        }
        let mut all: BTreeSet<String> = members.iter().cloned().collect();
        all.remove(actor);
        for m in &all {
            may_add(store, actor, m, default)?;
        }
        all.insert(actor.to_string());
        let all: Vec<String> = all.into_iter().collect();
        // The group record first: a channel never exists without its owner, and a name taken
        // by an administrator's channel is refused below and the record removed.
        let gk = key("group", channel);
        let taken = || {
            refused(
                ErrorCode::Conflict,
                format!("there is already a channel {channel}; choose another name"),
            )
        };
        if store.members(channel)?.is_some() {
            return Err(taken());
        }
        if !write(
            store,
            &gk,
            &Group {
                owner: actor.to_string(),
                title: None,
            },
            0,
        )? {
            return Err(taken());
        }
        if let Err(e) = store.add_channel(channel, &all) {
            store.delete_record(&refs(&gk))?;
            return Err(match e {
                StoreError::Exists { .. } => taken(),
                other => other.into(),
            });
        }
        return Ok(GroupChange {
            info: group_info(store, channel)?,
            affected: all,
        });
    }
    let members = store.members(channel)?.unwrap_or_default();
    let group = read_opt::<Group>(store, &key("group", channel))?;
    let role = match (&group, members.iter().any(|m| m == actor)) {
        (_, false) => GroupRole::Outsider,
        (Some((g, _)), true) if g.owner == actor => GroupRole::Owner,
        (Some(_), true) => GroupRole::Member,
        (None, true) => GroupRole::AdminChannelMember,
    };
    group_may(action, role, channel).map_err(|e| refused(ErrorCode::Forbidden, e.to_string()))?;
    match action {
        GroupAction::Create { .. } => Ok(GroupChange::default()),
        GroupAction::Invite { user } => {
            may_add(store, actor, user, default)?;
            store.update_members(channel, std::slice::from_ref(user), &[])?;
            Ok(GroupChange {
                info: group_info(store, channel)?,
                affected: vec![user.clone()],
            })
        }
        GroupAction::Leave => {
            let left = store.update_members(channel, &[], &[actor.to_string()])?;
            match group {
                Some((g, rev)) if g.owner == actor => pass_on(store, channel, g, rev)?,
                Some(_) if left.is_empty() => {
                    store.delete_channel(channel)?;
                    store.delete_record(&["group", channel])?;
                }
                _ => {}
            }
            Ok(GroupChange {
                info: None,
                affected: vec![actor.to_string()],
            })
        }
        GroupAction::Rename { title } => {
            let title = people::validate_display_name(title).map_err(|e| {
                refused(
                    ErrorCode::BadRequest,
                    format!("{e}").replace("display name", "title"),
                )
            })?;
            let gk = key("group", channel);
            for _ in 0..CAS_TRIES {
                let Some((mut g, rev)) = read_opt::<Group>(store, &gk)? else {
                    break;
                };
                g.title = Some(title.clone());
                if write(store, &gk, &g, rev)? {
                    break;
                }
            }
            Ok(GroupChange {
                info: group_info(store, channel)?,
                affected: members,
            })
        }
        GroupAction::Delete => {
            store.delete_channel(channel)?;
            store.delete_record(&["group", channel])?;
            Ok(GroupChange {
                info: None,
                affected: members,
            })
        }
    }
}

/// A channel whose owner left or was removed passes to the first remaining member; with
/// nobody left it is deleted with its clips.
fn pass_on(
    store: &dyn Store,
    channel: &str,
    mut group: Group,
    rev: u64,
) -> Result<(), PeopleError> {
    let members = store.members(channel)?.unwrap_or_default();
    let gk = key("group", channel);
    match members.into_iter().find(|m| *m != group.owner) {
        Some(next) => {
            group.owner = next;
            // Lost only to another writer changing the title: the owner change is re-applied.
            if !write(store, &gk, &group, rev)?
                && let Some((mut g, rev)) = read_opt::<Group>(store, &gk)?
            {
                g.owner = group.owner;
                write(store, &gk, &g, rev)?;
            }
        }
        None => {
            store.delete_channel(channel)?;
            store.delete_record(&refs(&gk))?;
        }
    }
    Ok(())
}

// ---- finding friends ----

/// Most people suggested at once.
pub const MAX_SUGGESTIONS: usize = 20;
/// Contacts whose own contacts are looked at for suggestions, at most.
const SUGGEST_FROM_CONTACTS: usize = 200;

/// People `user` may know: contacts of their contacts and members of their channels, each
/// counted once per shared contact and per shared channel, most first; never someone they
/// already have to do with, someone who blocked them, or someone who turned suggestions off.
pub fn suggest(store: &dyn Store, user: &str) -> Result<Vec<Suggestion>, StoreError> {
    let me = person(store, user)?;
    let mut counts: BTreeMap<String, u32> = BTreeMap::new();
    let contacts = me
        .contacts
        .iter()
        .filter(|(_, s)| **s == ContactState::Contact)
        .map(|(n, _)| n)
        .take(SUGGEST_FROM_CONTACTS);
    for c in contacts {
        for (n, s) in person(store, c)?.contacts {
            if s == ContactState::Contact {
                *counts.entry(n).or_default() += 1;
            }
        }
    }
    for ch in store.channels()? {
        if ch.members.iter().any(|m| m == user) {
            for m in ch.members {
                *counts.entry(m).or_default() += 1;
            }
        }
    }
    counts.retain(|n, _| n != user && !me.contacts.contains_key(n) && !me.blocked_by.contains(n));
    let mut ranked: Vec<(String, u32)> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut out = Vec::new();
    for (name, mutual) in ranked {
        if out.len() >= MAX_SUGGESTIONS {
            break;
        }
        let them = person(store, &name)?;
        if them.hidden
            || them.contacts.get(user) == Some(&ContactState::Blocked)
            || store.token_hash(&name)?.is_none()
        {
            continue;
        }
        out.push(Suggestion {
            user: name,
            display: them.display,
            mutual,
        });
    }
    Ok(out)
}

/// How long a user stays visible nearby.
pub const NEARBY_FOR_MS: i64 = 3_600_000;
/// Moves to another cell one user may make per hour: more would let them map where people are.
pub const NEARBY_MOVES_PER_HOUR: usize = 6;
/// Entries read for one nearby list at most, and people shown: a crowded city costs a bounded
/// amount per request.
const NEARBY_SCAN: usize = 1000;
const NEARBY_SHOWN: usize = 50;

/// Where a user is visible nearby.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NearbySpot {
    /// The 5-character cell.
    pub cell: String,
    /// When it is forgotten.
    pub expires_ms: i64,
}

/// A user's own nearby record: their cell, if visible, and when they moved lately.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NearbyOf {
    /// Their spot, if they are visible.
    pub spot: Option<NearbySpot>,
    /// When they moved to a new cell, within the last hour.
    pub moves: Vec<i64>,
}

fn spot_key(cell: &str, user: &str) -> Vec<String> {
    vec![
        "nearby".into(),
        cell.chars().take(4).collect(),
        user.to_string(),
    ]
}

/// Makes `user` visible in `cell` for an hour and lists the others visible within about
/// 10 km, nearest first (`None`: stops being visible, lists nobody). Exact positions never
/// reach the relay: clients send the cell.
pub fn nearby(
    store: &dyn Store,
    user: &str,
    cell: Option<&str>,
    now_ms: i64,
) -> Result<(Vec<NearbyEntry>, i64), PeopleError> {
    let k = key("nearby-of", user);
    let (mut mine, rev): (NearbyOf, u64) = read(store, &k)?;
    mine.moves.retain(|t| *t > now_ms - 3_600_000);
    let Some(cell) = cell else {
        if let Some(spot) = mine.spot.take() {
            store.delete_record(&refs(&spot_key(&spot.cell, user)))?;
        }
        write(store, &k, &mine, rev)?;
        return Ok((Vec::new(), 0));
    };
    people::check_cell(cell).map_err(|e| refused(ErrorCode::BadRequest, e.to_string()))?;
    let moved = mine.spot.as_ref().is_none_or(|s| s.cell != cell);
    if moved {
        if mine.moves.len() >= NEARBY_MOVES_PER_HOUR {
            return Err(refused(
                ErrorCode::Busy {
                    retry_after_ms: 600_000,
                },
                format!(
                    "you moved to another place {NEARBY_MOVES_PER_HOUR} times within an hour, the most this relay allows; try later"
                ),
            ));
        }
        mine.moves.push(now_ms);
        if let Some(old) = &mine.spot {
            store.delete_record(&refs(&spot_key(&old.cell, user)))?;
        }
    }
    let spot = NearbySpot {
        cell: cell.to_string(),
        expires_ms: now_ms + NEARBY_FOR_MS,
    };
    mine.spot = Some(spot.clone());
    if !write(store, &k, &mine, rev)? {
        return Err(refused(
            ErrorCode::Busy {
                retry_after_ms: 1000,
            },
            "your place changed meanwhile; try again",
        ));
    }
    put_raw(
        store,
        &refs(&spot_key(cell, user)),
        &serde_json::to_vec(&spot).map_err(|e| corrupt("nearby", e))?,
    )?;
    let me = person(store, user)?;
    let mut parents: Vec<String> = people::cells_around(cell)
        .iter()
        .map(|c| c.chars().take(4).collect())
        .collect();
    parents.sort();
    parents.dedup();
    let mut out = Vec::new();
    let mut scanned = 0;
    for parent in parents {
        for key in store.record_keys(&["nearby", &parent])? {
            scanned += 1;
            if scanned > NEARBY_SCAN {
                break;
            }
            let Some(name) = key.get(2) else { continue };
            if name == user
                || me.contacts.get(name) == Some(&ContactState::Blocked)
                || me.blocked_by.contains(name)
            {
                continue;
            }
            let Some((theirs, _)) = read_opt::<NearbySpot>(store, &key)? else {
                continue;
            };
            let Some(km) = people::km_between(cell, &theirs.cell) else {
                continue;
            };
            if theirs.expires_ms <= now_ms || f64::from(km) > people::NEARBY_KM {
                continue;
            }
            out.push(NearbyEntry {
                user: name.clone(),
                display: person(store, name)?.display,
                km,
            });
        }
    }
    out.sort_by(|a, b| a.km.cmp(&b.km).then_with(|| a.user.cmp(&b.user)));
    out.truncate(NEARBY_SHOWN);
    Ok((out, spot.expires_ms))
}

/// Deletes nearby entries past their hour; how many.
pub fn sweep_nearby(store: &dyn Store, now_ms: i64) -> Result<usize, StoreError> {
    let mut n = 0;
    for k in store.record_keys(&["nearby"])? {
        if read_opt::<NearbySpot>(store, &k)?.is_some_and(|(s, _)| s.expires_ms <= now_ms) {
            store.delete_record(&refs(&k))?;
            n += 1;
        }
    }
    for k in store.record_keys(&["nearby-of"])? {
        if read_opt::<NearbyOf>(store, &k)?.is_some_and(|(o, _)| {
            o.spot.as_ref().is_none_or(|s| s.expires_ms <= now_ms)
                && o.moves.iter().all(|t| *t <= now_ms - 3_600_000)
        }) {
            store.delete_record(&refs(&k))?;
        }
    }
    Ok(n)
}
