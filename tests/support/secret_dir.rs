//! A directory updated the way the kubelet updates a mounted Secret or
//! ConfigMap (its "atomic writer"): each version of the files lives in its own
//! hidden `..<version>` directory, `..data` is a symlink to the current one,
//! and each visible name is a symlink through `..data`. An update writes a new
//! version directory and renames a fresh symlink over `..data`, so the
//! visible files change all at once while their own symlinks never change: a
//! watch on the file's inode would miss it.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

/// A mounted-Secret look-alike.
pub struct SecretDir {
    dir: TempDir,
    version: u32,
}

impl SecretDir {
    /// A directory holding `files` (name, content) as version 1.
    pub fn new(files: &[(&str, &[u8])]) -> SecretDir {
        let mut secret = SecretDir { dir: tempfile::tempdir().expect("a temporary directory"), version: 0 };
        secret.update(files);
        for (name, _) in files {
            symlink(Path::new("..data").join(name), secret.dir.path().join(name)).expect("creating the file's symlink");
        }
        secret
    }

    /// The visible path of file `name`, as a container sees it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces every file at once with `files` (the same names as before).
    pub fn update(&mut self, files: &[(&str, &[u8])]) {
        let root = self.dir.path();
        let previous = self.version_dir(self.version);
        self.version += 1;
        let next = self.version_dir(self.version);
        std::fs::create_dir(&next).expect("creating the version directory");
        for (name, content) in files {
            std::fs::write(next.join(name), content).expect("writing a file of the new version");
        }
        let staged = root.join("..data_tmp");
        symlink(next.file_name().expect("a directory name"), &staged).expect("creating the staged ..data link");
        std::fs::rename(&staged, root.join("..data")).expect("swapping ..data");
        if self.version > 1 {
            std::fs::remove_dir_all(previous).expect("removing the previous version");
        }
    }

    fn version_dir(&self, version: u32) -> PathBuf {
        self.dir.path().join(format!("..version_{version}"))
    }
}
