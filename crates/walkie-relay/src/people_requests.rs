//! A session's people requests: its own profile, others' public profiles, contacts and the
//! channels users make. Each costs one token of the user's people rate limit before it
//! touches the store; the rules and records are [`crate::people`]'s. The people concerned
//! hear about changes at once: a contact request or answer reaches the other user's sessions,
//! and everyone whose channels changed gets their new channel list.

use std::sync::Arc;
use std::time::Instant;

use walkie_proto::clip::validate_name;
use walkie_proto::people::{ContactAction, ContactState, DirectFrom, GroupAction};
use walkie_proto::wire::{
    ContactEntry, DeviceInfo, ErrorCode, ErrorMsg, MAX_PROFILES, ReqId, ServerMsg,
};

use crate::people::{self, PeopleError};
use crate::registry::Session;
use crate::shared::{Shared, lock};

fn error(req: ReqId, code: ErrorCode, message: impl Into<String>) -> ServerMsg {
    ServerMsg::Error(ErrorMsg {
        req: Some(req),
        clip: None,
        code,
        message: message.into(),
    })
}

/// A people request, as the control loop hands it over.
pub(crate) enum PeopleRequest {
    SetProfile {
        display: Option<String>,
        direct_from: Option<DirectFrom>,
        suggest: Option<bool>,
    },
    Suggest,
    Nearby {
        cell: Option<String>,
    },
    Profiles {
        users: Vec<String>,
    },
    Contact {
        user: String,
        action: ContactAction,
    },
    Contacts,
    Group {
        channel: String,
        action: GroupAction,
    },
    Groups,
    LinkDevice,
    Devices,
    RemoveDevice {
        id: String,
    },
    /// A whole avatar upload (`None`: remove it).
    SetAvatar {
        png: Option<Vec<u8>>,
    },
    Avatar {
        user: String,
        small: bool,
    },
}

/// Answers one people request of `session`.
pub(crate) async fn answer(
    shared: &Arc<Shared>,
    session: &Session,
    req: ReqId,
    request: PeopleRequest,
) -> ServerMsg {
    let admitted = lock(&shared.people_limits).admit(session.user.clone(), Instant::now());
    if let Err(wait) = admitted {
        let ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX).max(1);
        return error(
            req,
            ErrorCode::Busy { retry_after_ms: ms },
            format!("too many requests about people; retry after {ms} ms"),
        );
    }
    let user = session.user.clone();
    let result = match request {
        PeopleRequest::SetProfile {
            display,
            direct_from,
            suggest,
        } => {
            let default = shared.config.direct_from;
            run(shared, move |s| {
                people::set_profile_with(s, &user, display.as_deref(), direct_from, suggest)
            })
            .await
            .map(|p| my_profile(req, p, default))
        }
        PeopleRequest::SetAvatar { png } => {
            let default = shared.config.direct_from;
            run(shared, move |s| {
                people::set_avatar(s, &user, png.as_deref())
            })
            .await
            .map(|p| my_profile(req, p, default))
        }
        PeopleRequest::Suggest => run(shared, move |s| Ok(people::suggest(s, &user)?))
            .await
            .map(|people| ServerMsg::Suggestions { req, people }),
        PeopleRequest::Nearby { cell } => {
            let now = walkie_proto::clip::now_ms();
            run(shared, move |s| {
                people::nearby(s, &user, cell.as_deref(), now)
            })
            .await
            .map(|(people, until_ms)| ServerMsg::Nearby {
                req,
                people,
                until_ms,
            })
        }
        PeopleRequest::Avatar { user: whose, small } => {
            let asked = whose.clone();
            run(shared, move |s| Ok(people::avatar(s, &asked, small)?))
                .await
                .map(|png| ServerMsg::Avatar {
                    req,
                    user: whose,
                    png,
                })
        }
        PeopleRequest::Profiles { users } => {
            if users.len() > MAX_PROFILES {
                return error(
                    req,
                    ErrorCode::TooLarge,
                    format!("ask for at most {MAX_PROFILES} profiles at once"),
                );
            }
            run(shared, move |s| Ok(people::profiles(s, &users)?))
                .await
                .map(|profiles| ServerMsg::Profiles { req, profiles })
        }
        PeopleRequest::Contacts => run(shared, move |s| Ok(people::contacts(s, &user)?))
            .await
            .map(|contacts| ServerMsg::Contacts {
                req,
                contacts: with_presence(shared, contacts),
            }),
        PeopleRequest::Contact {
            user: other,
            action,
        } => contact(shared, req, user, other, action).await,
        PeopleRequest::Group { channel, action } => group(shared, req, user, channel, action).await,
        PeopleRequest::Groups => run(shared, move |s| Ok(people::groups_of(s, &user)?))
            .await
            .map(|groups| ServerMsg::Groups { req, groups }),
        PeopleRequest::LinkDevice => {
            let now = walkie_proto::clip::now_ms();
            run(shared, move |s| people::link_device(s, &user, now))
                .await
                .map(|code| ServerMsg::DeviceLink {
                    req,
                    code,
                    expires_ms: now + people::DEVICE_LINK_MS,
                })
        }
        PeopleRequest::Devices => devices(shared, session, req).await,
        PeopleRequest::RemoveDevice { id } => {
            let removed = run(shared, move |s| people::remove_device(s, &user, &id)).await;
            shared.forget_devices(&session.user);
            match removed {
                Ok(true) => devices(shared, session, req).await,
                Ok(false) => Err((
                    ErrorCode::NotFound,
                    "you have no device with that id; `walkie device list` shows them".to_string(),
                )),
                Err(e) => Err(e),
            }
        }
    };
    result.unwrap_or_else(|(code, message)| error(req, code, message))
}

fn my_profile(req: ReqId, p: people::Person, default: DirectFrom) -> ServerMsg {
    ServerMsg::MyProfile {
        req,
        display: p.display,
        direct_from: p.direct_from.unwrap_or(default),
        avatar: p.avatar,
        suggest: !p.hidden,
    }
}

/// Runs a people function on the store's thread pool; failures as the code and sentence to send.
async fn run<T: Send + 'static>(
    shared: &Shared,
    f: impl FnOnce(&dyn walkie_store::Store) -> Result<T, PeopleError> + Send + 'static,
) -> Result<T, (ErrorCode, String)> {
    match shared.store(move |s| Ok(f(s))).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(PeopleError::Refused(code, message))) => Err((code, message)),
        Ok(Err(PeopleError::Store(e))) => {
            Err((ErrorCode::Storage, format!("the relay's store failed: {e}")))
        }
        Err(e) => Err((ErrorCode::Storage, format!("the relay's store failed: {e}"))),
    }
}

/// The user's devices, the first one first, with which are online here and which is asking.
async fn devices(
    shared: &Shared,
    session: &Session,
    req: ReqId,
) -> Result<ServerMsg, (ErrorCode, String)> {
    let user = session.user.clone();
    let others = run(shared, move |s| Ok(people::devices(s, &user)?)).await?;
    let online: Vec<Option<String>> = shared
        .registry
        .sessions_of(&session.user)
        .iter()
        .map(|s| s.device.clone())
        .collect();
    let info = |id: Option<&str>, name: String, created_ms: i64| DeviceInfo {
        id: id.unwrap_or(people::MAIN_DEVICE).to_string(),
        name,
        created_ms,
        online: online.iter().any(|d| d.as_deref() == id),
        this: session.device.as_deref() == id,
    };
    let mut list = vec![info(None, "first device".into(), 0)];
    list.extend(
        others
            .into_iter()
            .map(|(id, d)| info(Some(&id), d.name, d.created_ms)),
    );
    Ok(ServerMsg::Devices { req, devices: list })
}

/// Presence is told for contacts only, as it is for people one shares a channel with.
fn with_presence(shared: &Shared, mut entries: Vec<ContactEntry>) -> Vec<ContactEntry> {
    for e in &mut entries {
        e.online = e.state == Some(ContactState::Contact)
            && !shared.registry.sessions_of(&e.user).is_empty();
    }
    entries
}

async fn contact(
    shared: &Arc<Shared>,
    req: ReqId,
    user: String,
    other: String,
    action: ContactAction,
) -> Result<ServerMsg, (ErrorCode, String)> {
    let (actor, them) = (user.clone(), other.clone());
    let (pair, my_display, their_display) = run(shared, move |s| {
        let pair = people::contact(s, &actor, &them, action)?;
        Ok((
            pair,
            people::person(s, &actor)?.display,
            people::person(s, &them)?.display,
        ))
    })
    .await?;
    // The other side hears of it unless it blocked the actor (a block is never revealed).
    if pair.theirs != Some(ContactState::Blocked) {
        let entry = ContactEntry {
            user: user.clone(),
            display: my_display,
            state: pair.theirs,
            online: false,
        };
        let entry = with_presence(shared, vec![entry]).remove(0);
        shared.tell_everywhere(
            std::slice::from_ref(&other),
            &ServerMsg::ContactChanged { entry },
        );
    }
    crate::presence::contacts_changed(shared, &[user, other.clone()]).await;
    let mine = ContactEntry {
        user: other,
        display: their_display,
        state: pair.mine,
        online: false,
    };
    Ok(ServerMsg::Contacts {
        req,
        contacts: with_presence(shared, vec![mine]),
    })
}

async fn group(
    shared: &Arc<Shared>,
    req: ReqId,
    user: String,
    channel: String,
    action: GroupAction,
) -> Result<ServerMsg, (ErrorCode, String)> {
    if let GroupAction::Invite { user: u } = &action
        && validate_name(u).is_err()
    {
        return Err((ErrorCode::NotFound, format!("there is no user @{u}")));
    }
    let (create, default) = (shared.config.channel_create, shared.config.direct_from);
    let change = run(shared, move |s| {
        people::group(s, &user, &channel, &action, create, default)
    })
    .await?;
    tell_channels(shared, &change.affected).await;
    Ok(ServerMsg::Groups {
        req,
        groups: change.info.into_iter().collect(),
    })
}

/// Sends each of `users` their channel list as it now stands (here and on the other relays,
/// whose presence follows it as this relay's does).
pub(crate) async fn tell_channels(shared: &Arc<Shared>, users: &[String]) {
    if users.is_empty() {
        return;
    }
    let asked = users.to_vec();
    let Ok(lists) = shared
        .store(move |s| {
            asked
                .iter()
                .map(|u| s.channels_of(u))
                .collect::<Result<Vec<_>, _>>()
        })
        .await
    else {
        return;
    };
    for (user, channels) in users.iter().zip(lists) {
        crate::presence::channels_changed(shared, user, channels.clone());
        shared.tell_everywhere(
            std::slice::from_ref(user),
            &ServerMsg::Channels { channels },
        );
    }
}
