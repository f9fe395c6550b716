//! People, from the client's side: signing up with an invite link ([`join`]), the user's own
//! profile, others' display names, contacts, and the channels users make.

use std::time::Duration;

use walkie_net::{CertificateDer, Fingerprint, Trust, read_frame, write_frame};
use walkie_proto::people::{ContactAction, DirectFrom, GroupAction, InviteLink};
use walkie_proto::wire::{
    AVATAR_PART, ClientMsg, ContactEntry, DeviceInfo, GroupInfo, MAX_CONTROL_FRAME, NearbyEntry,
    PublicProfile, ServerMsg, Suggestion,
};

use crate::connection::{Client, REQUEST_TIMEOUT, connection_error, dial};
use crate::error::ClientError;
use crate::routing::Reply;

/// An account made by [`join`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    /// The relay's address from the link.
    pub relay: String,
    /// The pinned certificate from the link; `None` for a link without a pin (the relay's
    /// certificate was checked against the system's roots and its name).
    pub pin: Option<Fingerprint>,
    /// The new user's login name.
    pub user: String,
    /// Their token.
    pub token: String,
    /// The channel the invite added them to.
    pub channel: Option<String>,
}

/// The user's own profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MyProfile {
    /// Display name.
    pub display: Option<String>,
    /// Who may send them direct clips.
    pub direct_from: DirectFrom,
    /// Their avatar's tag, if they have one.
    pub avatar: Option<String>,
    /// Whether others may be suggested them.
    pub suggest: bool,
}

/// Makes an account on the relay an invite link points at, over a connection pinned to the
/// certificate the link names (a link without a pin: checked against the system's roots and
/// the relay's name): `name` is the login name, `display` an optional display name.
pub async fn join(
    link: &InviteLink,
    name: &str,
    display: Option<&str>,
) -> Result<Joined, ClientError> {
    join_with_roots(link, Vec::new(), name, display).await
}

/// Like [`join`]; for a link without a pin, the `extra` roots are trusted besides the
/// system's (a private CA's certificate). A link's pin wins: `extra` is not used then.
pub async fn join_with_roots(
    link: &InviteLink,
    extra: Vec<CertificateDer<'static>>,
    name: &str,
    display: Option<&str>,
) -> Result<Joined, ClientError> {
    let pin = link
        .fingerprint
        .as_deref()
        .map(Fingerprint::parse)
        .transpose()?;
    let trust = pin.map_or(Trust::Roots { extra }, Trust::Pinned);
    let (endpoint, conn) = dial(
        &trust,
        &link.addr,
        Duration::from_secs(10),
        crate::connection::Datagrams::On,
    )
    .await?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| connection_error(&e))?;
    let ask = ClientMsg::Join {
        code: link.code.clone(),
        name: name.to_string(),
        display: display.map(str::to_string),
        client: format!("walkie/{}", env!("CARGO_PKG_VERSION")),
    };
    if let Err(e) = write_frame(&mut send, &ask, MAX_CONTROL_FRAME).await {
        return Err(conn
            .close_reason()
            .map_or(e.into(), |r| connection_error(&r)));
    }
    let answer = tokio::time::timeout(
        REQUEST_TIMEOUT,
        read_frame::<ServerMsg>(&mut recv, MAX_CONTROL_FRAME),
    )
    .await
    .map_err(|_| ClientError::Timeout(REQUEST_TIMEOUT))?;
    let out = match answer {
        Ok(Some(ServerMsg::Joined {
            user,
            token,
            channel,
        })) => Ok(Joined {
            relay: link.addr.clone(),
            pin,
            user,
            token,
            channel,
        }),
        Ok(Some(ServerMsg::Error(e))) => Err(ClientError::Refused(e)),
        Ok(Some(other)) => Err(ClientError::Protocol(format!(
            "expected an answer to the sign-up, got {other:?}"
        ))),
        Ok(None) => Err(conn.close_reason().map_or_else(
            || ClientError::Closed("the relay closed the sign-up".into()),
            |r| connection_error(&r),
        )),
        Err(e) => Err(conn
            .close_reason()
            .map_or(e.into(), |r| connection_error(&r))),
    };
    conn.close(0u32.into(), b"bye");
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    out
}

fn unexpected(what: &str) -> ClientError {
    ClientError::Protocol(format!("unexpected reply to a {what} request"))
}

fn my_profile(reply: Reply, what: &str) -> Result<MyProfile, ClientError> {
    match reply {
        Reply::People(ServerMsg::MyProfile {
            display,
            direct_from,
            avatar,
            suggest,
            ..
        }) => Ok(MyProfile {
            display,
            direct_from,
            avatar,
            suggest,
        }),
        _ => Err(unexpected(what)),
    }
}

impl Client {
    /// Sets the fields given of the user's profile (none: reads it); the profile after.
    pub async fn set_profile(
        &self,
        display: Option<String>,
        direct_from: Option<DirectFrom>,
    ) -> Result<MyProfile, ClientError> {
        self.set_profile_with(display, direct_from, None).await
    }

    /// [`Client::set_profile`], and whether others may be suggested this user.
    pub async fn set_profile_with(
        &self,
        display: Option<String>,
        direct_from: Option<DirectFrom>,
        suggest: Option<bool>,
    ) -> Result<MyProfile, ClientError> {
        my_profile(
            self.request(|req| ClientMsg::SetProfile {
                req,
                display,
                direct_from,
                suggest,
            })
            .await?,
            "profile",
        )
    }

    /// People the user may know, most mutual connections first.
    pub async fn suggest(&self) -> Result<Vec<Suggestion>, ClientError> {
        match self.request(|req| ClientMsg::Suggest { req }).await? {
            Reply::People(ServerMsg::Suggestions { people, .. }) => Ok(people),
            _ => Err(unexpected("suggestions")),
        }
    }

    /// Makes the user visible nearby for an hour at `(lat, lon)`, sending only its ~5 km
    /// geohash cell, and lists who else is within about 10 km; `None` stops being visible.
    /// Returns the people and until when the user is visible.
    pub async fn nearby(
        &self,
        at: Option<(f64, f64)>,
    ) -> Result<(Vec<NearbyEntry>, i64), ClientError> {
        let cell = at.map(|(lat, lon)| walkie_proto::people::cell_of(lat, lon));
        match self.request(|req| ClientMsg::Nearby { req, cell }).await? {
            Reply::People(ServerMsg::Nearby {
                people, until_ms, ..
            }) => Ok((people, until_ms)),
            _ => Err(unexpected("nearby")),
        }
    }

    /// Sets the user's avatar to a 256 px PNG (from [`crate::avatar::prepare`]), or removes
    /// it with `None`; the profile after.
    pub async fn set_avatar(&self, png: Option<Vec<u8>>) -> Result<MyProfile, ClientError> {
        let png = png.unwrap_or_default();
        let total = u32::try_from(png.len())
            .map_err(|_| ClientError::Config("the avatar is too large".into()))?;
        let reply = self
            .request_parts(|req| {
                if png.is_empty() {
                    return vec![ClientMsg::SetAvatar {
                        req,
                        offset: 0,
                        total,
                        bytes: Vec::new(),
                    }];
                }
                // Parts in order under one request id; the relay answers the last.
                png.chunks(AVATAR_PART)
                    .enumerate()
                    .map(|(i, c)| ClientMsg::SetAvatar {
                        req,
                        offset: (i * AVATAR_PART) as u32,
                        total,
                        bytes: c.to_vec(),
                    })
                    .collect()
            })
            .await?;
        my_profile(reply, "avatar")
    }

    /// `user`'s avatar as a PNG (the 64 px one when `small`), if they have one.
    pub async fn avatar(&self, user: &str, small: bool) -> Result<Option<Vec<u8>>, ClientError> {
        let user = user.to_string();
        match self
            .request(|req| ClientMsg::Avatar { req, user, small })
            .await?
        {
            Reply::People(ServerMsg::Avatar { png, .. }) => Ok(png),
            _ => Err(unexpected("avatar")),
        }
    }

    /// The public profiles of the users among `users` that exist.
    pub async fn profiles(&self, users: Vec<String>) -> Result<Vec<PublicProfile>, ClientError> {
        match self
            .request(|req| ClientMsg::Profiles { req, users })
            .await?
        {
            Reply::People(ServerMsg::Profiles { profiles, .. }) => Ok(profiles),
            _ => Err(unexpected("profiles")),
        }
    }

    /// Does `action` about `user`; where the user now stands with them.
    pub async fn contact(
        &self,
        user: &str,
        action: ContactAction,
    ) -> Result<ContactEntry, ClientError> {
        let user = user.to_string();
        match self
            .request(|req| ClientMsg::Contact { req, user, action })
            .await?
        {
            Reply::People(ServerMsg::Contacts { mut contacts, .. }) if contacts.len() == 1 => {
                Ok(contacts.remove(0))
            }
            _ => Err(unexpected("contact")),
        }
    }

    /// Everyone the user has to do with, sorted by name.
    pub async fn contacts(&self) -> Result<Vec<ContactEntry>, ClientError> {
        match self.request(|req| ClientMsg::Contacts { req }).await? {
            Reply::People(ServerMsg::Contacts { contacts, .. }) => Ok(contacts),
            _ => Err(unexpected("contacts")),
        }
    }

    /// Does `action` to `channel`; the channel as it now stands (`None` after leave or delete).
    pub async fn group(
        &self,
        channel: &str,
        action: GroupAction,
    ) -> Result<Option<GroupInfo>, ClientError> {
        let channel = channel.to_string();
        match self
            .request(|req| ClientMsg::Group {
                req,
                channel,
                action,
            })
            .await?
        {
            Reply::People(ServerMsg::Groups { mut groups, .. }) => Ok(groups.pop()),
            _ => Err(unexpected("channel")),
        }
    }

    /// A one-time link that signs another device in as this user (`walkie join LINK` there),
    /// made with this connection's relay address and pin (none: a link without a pin, for a
    /// relay with a CA-issued certificate); and when it stops working.
    pub async fn link_device(
        &self,
        relay: &str,
        pin: Option<Fingerprint>,
    ) -> Result<(InviteLink, i64), ClientError> {
        match self.request(|req| ClientMsg::LinkDevice { req }).await? {
            Reply::People(ServerMsg::DeviceLink {
                code, expires_ms, ..
            }) => {
                // Of several relays of a cluster, the link names the first.
                let addr = relay.split(',').next().unwrap_or(relay).trim().to_string();
                Ok((
                    InviteLink {
                        addr,
                        code: Some(code),
                        fingerprint: pin.map(|p| p.to_string()),
                    },
                    expires_ms,
                ))
            }
            _ => Err(unexpected("device link")),
        }
    }

    /// The user's devices, the first one first.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, ClientError> {
        match self.request(|req| ClientMsg::Devices { req }).await? {
            Reply::People(ServerMsg::Devices { devices, .. }) => Ok(devices),
            _ => Err(unexpected("devices")),
        }
    }

    /// Removes one of the user's other devices; the devices left.
    pub async fn remove_device(&self, id: &str) -> Result<Vec<DeviceInfo>, ClientError> {
        let id = id.to_string();
        match self
            .request(|req| ClientMsg::RemoveDevice { req, id })
            .await?
        {
            Reply::People(ServerMsg::Devices { devices, .. }) => Ok(devices),
            _ => Err(unexpected("device removal")),
        }
    }

    /// The channels the user is a member of.
    pub async fn groups(&self) -> Result<Vec<GroupInfo>, ClientError> {
        match self.request(|req| ClientMsg::Groups { req }).await? {
            Reply::People(ServerMsg::Groups { groups, .. }) => Ok(groups),
            _ => Err(unexpected("channels")),
        }
    }
}
