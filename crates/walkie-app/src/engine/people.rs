//! People as the app shows them: your own profile, everyone's display names and avatars
//! (64 px, decoded once), your contacts and your channels with their owners; and the people
//! actions (join with an invite link, contact requests and answers, channels, profile).
//! Everything is asked of the relay through [`Client`]; the worker calls these and shows the
//! outcome as a notice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use walkie_client::people::{MyProfile, join as join_relay};
use walkie_client::profile::Profile;
use walkie_client::{Client, ClientError};
use walkie_proto::people::{ContactAction, ContactState, GroupAction, InviteLink};
use walkie_proto::wire::{ContactEntry, GroupInfo, NearbyEntry, Suggestion};

/// An avatar ready to draw: RGBA pixels, row by row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvatarPixels {
    /// Width and height.
    pub size: [usize; 2],
    /// `size[0] * size[1] * 4` bytes.
    pub rgba: Vec<u8>,
    /// Changes with the avatar (the relay's tag): views cache textures by it.
    pub tag: String,
}

/// What the app knows of one person.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PersonView {
    /// Their display name.
    pub display: Option<String>,
    /// Their avatar, once fetched.
    pub avatar: Option<Arc<AvatarPixels>>,
}

/// People in the snapshot.
#[derive(Clone, Debug, Default)]
pub struct PeopleView {
    /// Your own profile, once read.
    pub me: Option<MyProfile>,
    /// Everyone seen (senders, contacts, channel members), by login name.
    pub persons: BTreeMap<String, PersonView>,
    /// Your contacts (requests and blocks too).
    pub contacts: Vec<ContactEntry>,
    /// Your channels.
    pub groups: Vec<GroupInfo>,
    /// People you may know, when asked.
    pub suggestions: Vec<Suggestion>,
    /// People nearby, when asked.
    pub nearby: Vec<NearbyEntry>,
}

impl PeopleView {
    /// `Display Name (@user)`, or `@user` without a display name.
    pub fn name_of(&self, user: &str) -> String {
        match self.persons.get(user).and_then(|p| p.display.as_deref()) {
            Some(d) => format!("{d} (@{user})"),
            None => format!("@{user}"),
        }
    }

    /// Where you stand with `user`.
    pub fn contact_state(&self, user: &str) -> Option<ContactState> {
        self.contacts
            .iter()
            .find(|c| c.user == user)
            .and_then(|c| c.state)
    }
}

/// Decodes a 64 px avatar PNG from the relay (it encoded it; still read with limits).
fn decode(png: &[u8], tag: &str) -> Option<AvatarPixels> {
    let mut reader =
        image::ImageReader::with_format(std::io::Cursor::new(png), image::ImageFormat::Png);
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(256);
    limits.max_image_height = Some(256);
    reader.limits(limits);
    let img = reader.decode().ok()?.to_rgba8();
    Some(AvatarPixels {
        size: [img.width() as usize, img.height() as usize],
        rgba: img.into_raw(),
        tag: tag.to_string(),
    })
}

/// Reads the profiles of `names` not known yet (or all of them with `again`), and the
/// avatars that are new or changed.
pub async fn learn(
    client: &Client,
    view: &mut PeopleView,
    names: impl IntoIterator<Item = String>,
    again: bool,
) -> Result<(), ClientError> {
    let wanted: BTreeSet<String> = names
        .into_iter()
        .filter(|n| again || !view.persons.contains_key(n))
        .collect();
    let wanted: Vec<String> = wanted
        .into_iter()
        .take(walkie_proto::wire::MAX_PROFILES)
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    for p in client.profiles(wanted).await? {
        let entry = view.persons.entry(p.user.clone()).or_default();
        entry.display = p.display;
        let have = entry.avatar.as_ref().map(|a| a.tag.clone());
        match p.avatar {
            Some(tag) if have.as_ref() != Some(&tag) => {
                let png = client.avatar(&p.user, true).await?;
                entry.avatar = png.and_then(|png| decode(&png, &tag)).map(Arc::new);
            }
            Some(_) => {}
            None => entry.avatar = None,
        }
    }
    Ok(())
}

/// Reads your profile, contacts and channels again, and the people in them.
pub async fn refresh(
    client: &Client,
    view: &mut PeopleView,
    also: Vec<String>,
) -> Result<(), ClientError> {
    view.me = Some(client.set_profile(None, None).await?);
    view.contacts = client.contacts().await?;
    view.groups = client.groups().await?;
    let mut names: Vec<String> = also;
    names.push(client.user().to_string());
    names.extend(view.contacts.iter().map(|c| c.user.clone()));
    names.extend(view.groups.iter().flat_map(|g| g.members.iter().cloned()));
    learn(client, view, names, false).await
}

/// Makes an account from an invite link (or signs this device in with a device link); the
/// profile to connect with.
pub async fn join(link: &str, name: &str, display: Option<&str>) -> Result<Profile, String> {
    let link: InviteLink = link
        .trim()
        .parse()
        .map_err(|e: walkie_proto::people::LinkError| e.to_string())?;
    let joined = join_relay(&link, name.trim().trim_start_matches('@'), display)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Profile {
        relay: Some(joined.relay),
        user: Some(joined.user),
        token: Some(joined.token),
        cert: None,
        fingerprint: joined.pin.map(|p| p.to_string()),
        ca_file: None,
    })
}

/// Does a contact action; the sentence to show.
pub async fn contact(
    client: &Client,
    view: &mut PeopleView,
    user: &str,
    action: ContactAction,
) -> Result<String, ClientError> {
    let user = user.trim().trim_start_matches('@');
    let entry = client.contact(user, action).await?;
    view.contacts.retain(|c| c.user != entry.user);
    let name = view.name_of(&entry.user);
    let said = match entry.state {
        Some(ContactState::Requested) => format!("Asked {name} to be your contact."),
        Some(ContactState::Contact) => format!("{name} is your contact."),
        Some(ContactState::Blocked) => format!("Blocked {name}: they cannot reach you."),
        Some(ContactState::Incoming) | None => format!("{name} is no longer in your contacts."),
    };
    if entry.state.is_some() {
        view.contacts.push(entry.clone());
        view.contacts.sort_by(|a, b| a.user.cmp(&b.user));
    }
    learn(client, view, [entry.user], false).await?;
    Ok(said)
}

/// A contact's change pushed by the relay.
pub fn contact_changed(view: &mut PeopleView, entry: ContactEntry) {
    view.contacts.retain(|c| c.user != entry.user);
    if entry.state.is_some() {
        if let Some(d) = &entry.display {
            view.persons.entry(entry.user.clone()).or_default().display = Some(d.clone());
        }
        view.contacts.push(entry);
        view.contacts.sort_by(|a, b| a.user.cmp(&b.user));
    }
}

/// Does a channel action; the sentence to show.
pub async fn group(
    client: &Client,
    view: &mut PeopleView,
    channel: &str,
    action: GroupAction,
) -> Result<String, ClientError> {
    let channel = channel.trim().trim_start_matches('#');
    let said = match &action {
        GroupAction::Create { .. } => format!("Made channel {channel}."),
        GroupAction::Invite { user } => format!("Added @{user} to {channel}."),
        GroupAction::Leave => format!("Left {channel}."),
        GroupAction::Rename { title } => format!("{channel} is now called {title}."),
        GroupAction::Delete => format!("Deleted {channel} and its clips."),
    };
    client.group(channel, action).await?;
    view.groups = client.groups().await?;
    let members: Vec<String> = view
        .groups
        .iter()
        .flat_map(|g| g.members.iter().cloned())
        .collect();
    learn(client, view, members, false).await?;
    Ok(said)
}

/// Sets your display name; the sentence to show.
pub async fn set_display(
    client: &Client,
    view: &mut PeopleView,
    display: &str,
) -> Result<String, ClientError> {
    let me = client.set_profile(Some(display.to_string()), None).await?;
    let said = format!(
        "You are now shown as {}.",
        me.display.as_deref().unwrap_or("your login name")
    );
    view.me = Some(me);
    learn(client, view, [client.user().to_string()], true).await?;
    Ok(said)
}

/// Sets your avatar from a picture file; the sentence to show.
pub async fn set_avatar(
    client: &Client,
    view: &mut PeopleView,
    path: &Path,
) -> Result<String, ClientError> {
    let png = walkie_client::avatar::prepare(path)?;
    view.me = Some(client.set_avatar(Some(png)).await?);
    learn(client, view, [client.user().to_string()], true).await?;
    Ok("Your avatar is set.".to_string())
}
