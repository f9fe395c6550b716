//! A relay's data dir is private to the user that runs it: directories 0700, files 0600
//! (clips are people's voices; `walkie.db` holds token hashes). Directories and files are
//! created so, and [`tighten`] fixes a data dir written by an older build or another umask.
//! Elsewhere than Unix these are plain creations.

use std::fs::{self, OpenOptions};
use std::io;
use std::path::Path;

/// Mode of every directory under the data dir.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file under the data dir.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents, each new one 0700.
pub fn create_dir_all(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(dir)
}

/// Creates one directory, 0700.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(dir)
}

/// Options that create a file 0600 (the mode applies only to a file they create).
pub fn file_options() -> OpenOptions {
    let mut opts = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, FILE_MODE);
    opts
}

/// Makes every directory under `root` (and `root`) 0700 and every file 0600 where they were
/// more open; returns those it changed. Symbolic links are not followed.
pub fn tighten(root: &Path) -> io::Result<Vec<std::path::PathBuf>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut changed = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(path) = stack.pop() {
            let meta = fs::symlink_metadata(&path)?;
            let want = if meta.is_dir() {
                DIR_MODE
            } else if meta.is_file() {
                FILE_MODE
            } else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o777;
            if mode & !want != 0 {
                fs::set_permissions(&path, fs::Permissions::from_mode(mode & want))?;
                changed.push(path.clone());
            }
            if meta.is_dir() {
                for entry in fs::read_dir(&path)? {
                    stack.push(entry?.path());
                }
            }
        }
        Ok(changed)
    }
    #[cfg(not(unix))]
    {
        let _ = root;
        Ok(Vec::new())
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn new_dirs_and_files_are_private_and_old_ones_are_tightened() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data/clips");
        create_dir_all(&dir).expect("created");
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("a.opus");
        file_options()
            .write(true)
            .create_new(true)
            .open(&file)
            .expect("created");
        assert_eq!(mode(&file), 0o600);
        let loose = dir.join("old.opus");
        fs::write(&loose, b"x").expect("written");
        fs::set_permissions(&loose, fs::Permissions::from_mode(0o644)).expect("chmod");
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).expect("chmod");
        assert_eq!(
            tighten(&tmp.path().join("data")).expect("tightened").len(),
            2
        );
        assert_eq!(
            (mode(&loose), mode(&dir), mode(&file)),
            (0o600, 0o700, 0o600)
        );
        assert_eq!(
            tighten(&tmp.path().join("data")).expect("tightened"),
            Vec::<std::path::PathBuf>::new(),
            "nothing left to do"
        );
    }
}
