//! The app's own settings file, `CONFIG_DIR/app.toml`: audio devices, noise suppression,
//! bitrate, the conversations added by hand, and the connection profiles used before (the
//! last one first). Written with mode 0600 because profiles hold tokens.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use walkie_client::ClientError;
use walkie_client::profile::Profile;

/// Lowest and highest Opus bitrate the settings offer, in bits per second.
pub const BITRATE_RANGE: (u32, u32) = (8_000, 64_000);
/// Profiles remembered at most.
const MAX_PROFILES: usize = 8;

/// What the user can change in the settings view.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppSettings {
    /// Input device name (`None`: the system default; `null` and `wav:PATH` also work).
    pub input_device: Option<String>,
    /// Output device name (`None`: the system default; `null` discards).
    pub output_device: Option<String>,
    /// Remove background noise from the microphone (RNNoise).
    pub noise_suppression: bool,
    /// Opus bitrate of clips you send, in bits per second.
    pub bitrate: u32,
    /// Channels (`crew`) and contacts (`@bob`) added by hand, shown even before any clip.
    pub conversations: Vec<String>,
    /// Play new clips of every conversation as they come, not only the one on screen.
    pub autoplay_everywhere: bool,
    /// Conversations (`crew`, `@bob`) whose messages raise no desktop notification.
    pub muted: Vec<String>,
    /// How fast clips play, in percent (100, 150 or 200), the pitch kept.
    pub speed_percent: u32,
}

impl Default for AppSettings {
    fn default() -> Self {
        AppSettings {
            input_device: None,
            output_device: None,
            noise_suppression: true,
            bitrate: 24_000,
            conversations: Vec::new(),
            autoplay_everywhere: false,
            muted: Vec::new(),
            speed_percent: 100,
        }
    }
}

/// Everything in `app.toml`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AppFile {
    /// The settings.
    pub settings: AppSettings,
    /// Connection profiles used before, the most recent first.
    pub profiles: Vec<Profile>,
}

impl AppFile {
    /// `DIR/app.toml`.
    pub fn path(config_dir: &Path) -> PathBuf {
        config_dir.join("app.toml")
    }

    /// Reads the file; a missing file gives the defaults.
    pub fn load(path: &Path) -> Result<AppFile, ClientError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                ClientError::Config(format!("{}: not valid app settings: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(AppFile::default()),
            Err(source) => Err(ClientError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the file (mode 0600), creating its directory.
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        walkie_client::profile::save_private_toml(path, self)
    }

    /// Puts `profile` first, dropping an older one for the same relay and user.
    pub fn remember(&mut self, profile: Profile) {
        self.profiles
            .retain(|p| !(p.relay == profile.relay && p.user == profile.user));
        self.profiles.insert(0, profile);
        self.profiles.truncate(MAX_PROFILES);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_and_profiles_roundtrip_and_the_latest_profile_comes_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = AppFile::path(dir.path());
        assert_eq!(
            AppFile::load(&path).expect("missing is default"),
            AppFile::default()
        );
        let mut file = AppFile::default();
        file.settings.bitrate = 32_000;
        file.settings.conversations.push("crew".into());
        let p = |user: &str, token: &str| Profile {
            relay: Some("h:1".into()),
            user: Some(user.into()),
            token: Some(token.into()),
            ..Profile::default()
        };
        file.remember(p("ann", "1"));
        file.remember(p("bob", "2"));
        file.remember(p("ann", "3"));
        assert_eq!(file.profiles, vec![p("ann", "3"), p("bob", "2")]);
        file.save(&path).expect("saves");
        assert_eq!(AppFile::load(&path).expect("loads"), file);
        std::fs::write(&path, "settings = 5").expect("write");
        assert!(AppFile::load(&path).is_err());
    }
}
