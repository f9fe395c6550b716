//! The demo relay: a relay in this process on `127.0.0.1:0` with a temporary data dir (the
//! embedded store), users alice and bob with display names, and the channel `crew` of the two. `walkie demo`
//! and `walkie app --demo` both start this one.

use std::sync::Arc;

use walkie_store::Store;
use walkie_store::sqlite::SqliteStore;

use crate::{RelayConfig, RelayError, RelayHandle, auth};

/// The users of the demo relay, in order.
pub const DEMO_USERS: [&str; 2] = ["alice", "bob"];
/// Their display names: any script is welcome.
pub const DEMO_DISPLAY_NAMES: [&str; 2] = ["Alice Liddell", "Bob 鲍勃"];
/// The demo relay's channel, of both users.
pub const DEMO_CHANNEL: &str = "crew";

/// A running demo relay. Its data dir is deleted when it is dropped.
pub struct DemoRelay {
    /// The relay (address, fingerprint).
    pub handle: RelayHandle,
    /// `(user, token)` for each of [`DEMO_USERS`].
    pub users: Vec<(String, String)>,
    data: tempfile::TempDir,
}

impl DemoRelay {
    /// Creates the data dir, the users and the channel, and starts the relay.
    pub async fn start() -> Result<DemoRelay, RelayError> {
        let mut builder = tempfile::Builder::new();
        builder.prefix("walkie-demo-relay-");
        // Private from the start, as every data dir (the crate's default follows the umask).
        #[cfg(unix)]
        builder.permissions(std::os::unix::fs::PermissionsExt::from_mode(
            walkie_store::private::DIR_MODE,
        ));
        let data = builder
            .tempdir()
            .map_err(|source| walkie_net::NetError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let store = SqliteStore::open(data.path())?;
        let mut users = Vec::new();
        for (user, display) in DEMO_USERS.into_iter().zip(DEMO_DISPLAY_NAMES) {
            let token = auth::new_token();
            store.add_user(user, &auth::hash_token(&token))?;
            crate::people::set_profile(&store, user, Some(display), None).map_err(|e| match e {
                crate::people::PeopleError::Store(e) => RelayError::from(e),
                refused => RelayError::Task(refused.to_string()),
            })?;
            users.push((user.to_string(), token));
        }
        store.add_channel(DEMO_CHANNEL, &DEMO_USERS.map(String::from))?;
        let config = RelayConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            ..RelayConfig::default()
        };
        let handle = crate::start(config, data.path(), Arc::new(store)).await?;
        Ok(DemoRelay {
            handle,
            users,
            data,
        })
    }

    /// The token of a demo user.
    pub fn token(&self, user: &str) -> Option<&str> {
        self.users
            .iter()
            .find(|(u, _)| u == user)
            .map(|(_, t)| t.as_str())
    }

    /// Where the relay keeps its data.
    pub fn data_dir(&self) -> &std::path::Path {
        self.data.path()
    }

    /// Stops the relay (then the data dir goes).
    pub async fn shutdown(self) {
        self.handle.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_demo_relay_has_two_users_and_their_channel() {
        let demo = DemoRelay::start().await.expect("starts");
        assert!(demo.handle.addr.ip().is_loopback() && demo.handle.addr.port() != 0);
        assert_eq!(demo.token("alice").map(str::len), Some(64));
        assert!(demo.token("carol").is_none());
        let store = SqliteStore::open(demo.data_dir()).expect("opens");
        assert_eq!(
            store.members(DEMO_CHANNEL).expect("reads"),
            Some(vec!["alice".into(), "bob".into()])
        );
        assert_eq!(
            crate::people::person(&store, "bob")
                .expect("reads")
                .display
                .as_deref(),
            Some("Bob 鲍勃")
        );
        let dir = demo.data_dir().to_path_buf();
        demo.shutdown().await;
        assert!(!dir.exists(), "the data dir goes with the relay");
    }
}
