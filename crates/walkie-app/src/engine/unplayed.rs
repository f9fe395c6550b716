//! The played marks kept across restarts: which clips someone sent you that you have not
//! heard yet.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use walkie_client::ClientError;
use walkie_proto::clip::ClipId;

/// The clips someone sent `user` that they have not played yet, kept in
/// `DATA_DIR/app/USER/unplayed.txt` (one id a line).
pub struct Unplayed {
    path: PathBuf,
    ids: BTreeSet<ClipId>,
}

impl Unplayed {
    /// Loads the list (unreadable lines are skipped; a missing file is an empty list).
    pub fn load(data_dir: &Path, user: &str) -> Unplayed {
        let path = data_dir.join("app").join(user).join("unplayed.txt");
        let ids = std::fs::read_to_string(&path)
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default();
        Unplayed { path, ids }
    }

    /// True if `id` is waiting to be played.
    pub fn contains(&self, id: &ClipId) -> bool {
        self.ids.contains(id)
    }

    /// Every id waiting.
    pub fn ids(&self) -> impl Iterator<Item = &ClipId> {
        self.ids.iter()
    }

    /// Adds or removes `id` and saves the list.
    pub fn set(&mut self, id: ClipId, unplayed: bool) -> Result<(), ClientError> {
        let changed = if unplayed {
            self.ids.insert(id)
        } else {
            self.ids.remove(&id)
        };
        if !changed {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ClientError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let text: String = self.ids.iter().map(|id| format!("{id}\n")).collect();
        std::fs::write(&self.path, text).map_err(|source| ClientError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unplayed_marks_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut u = Unplayed::load(dir.path(), "ann");
        u.set(ClipId([1; 16]), true).expect("saves");
        u.set(ClipId([2; 16]), true).expect("saves");
        u.set(ClipId([1; 16]), false).expect("saves");
        let again = Unplayed::load(dir.path(), "ann");
        assert_eq!(
            again.ids().copied().collect::<Vec<_>>(),
            vec![ClipId([2; 16])]
        );
        assert!(!Unplayed::load(dir.path(), "bob").contains(&ClipId([2; 16])));
    }
}
