//! Content-addressed cache of compiled artifacts, authenticated so that only artifacts this
//! host produced are ever deserialized.
//!
//! Entries are keyed by SHA-256 of their inputs (and, for native code, the engine
//! fingerprint). Each file carries an HMAC-SHA256 tag made with a per-cache secret key
//! (`host.key`, mode 0600): a `.cwasm` planted or edited by anyone else fails the tag check and
//! is recompiled instead of being loaded as native code.
//!
//! The cache is trusted by ownership, not by location: its folder is created 0700, and a
//! folder or key not owned by this user, or writable by anyone else, is refused. The key is
//! created exclusively (a link planted in its place is never followed) and checked on every
//! load. The cache's size is bounded: past [`MAX_CACHE_BYTES`] the least recently used entries
//! are removed.

use super::engine::{compile, engine, engine_fingerprint};
use super::verdict::Failure;
use crate::hash::{hmac_sha256 as hmac, sha256_hex};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use wasmtime::component::Component;

/// Length of the authentication tag at the end of every cache file.
const TAG_LEN: usize = 32;

/// Bytes of artifacts and token streams kept before the least recently used are evicted.
/// Why 2 GiB: a component is ~50 KiB and its native code ≤ 1 MiB, so a search of thousands of
/// candidates fits, while a long-running service cannot fill the disk.
pub const MAX_CACHE_BYTES: u64 = 2 << 30;

/// Evictions run after this many writes (and when a cache is opened). Why 32: a scan of the
/// folder costs milliseconds; once per 32 entries (≤ 32 MiB of growth) keeps it negligible.
const EVICT_EVERY: u32 = 32;

/// Folders whose entries count towards the size bound.
const BOUNDED_DIRS: &[&str] = &["artifacts", "tokens"];

/// Why the cache cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// An I/O error.
    #[error("cache {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The folder or key is not this user's alone.
    #[error("refusing the cache {path}: {reason} (it must belong to uid {uid} and be writable by no one else; remove it or set AUTOPRUNE_CACHE)")]
    Untrusted {
        /// The file or folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
        /// The user running autoprune.
        uid: u32,
    },
    /// No per-user place for the cache is known.
    #[error("no per-user cache folder: HOME, XDG_CACHE_HOME and XDG_RUNTIME_DIR are unset; set AUTOPRUNE_CACHE")]
    NoHome,
}

impl From<CacheError> for std::io::Error {
    fn from(e: CacheError) -> Self {
        std::io::Error::other(e)
    }
}

/// A directory of authenticated artifacts.
#[derive(Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    key: [u8; 32],
    max_bytes: u64,
    /// Writes since this cache was opened (shared by its clones), for [`EVICT_EVERY`].
    writes: std::sync::Arc<AtomicU32>,
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCache")
            .field("dir", &self.dir)
            .finish()
    }
}

impl ArtifactCache {
    /// The default location: `$AUTOPRUNE_CACHE`, else `$XDG_CACHE_HOME/autoprune`, else
    /// `~/.cache/autoprune`, else `$XDG_RUNTIME_DIR/autoprune` (per-user by definition). There
    /// is no shared fallback such as `/tmp`: another user could prepare it.
    pub fn default_dir() -> Result<PathBuf, CacheError> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(d) = var("AUTOPRUNE_CACHE") {
            return Ok(PathBuf::from(d));
        }
        if let Some(d) = var("XDG_CACHE_HOME") {
            return Ok(PathBuf::from(d).join("autoprune"));
        }
        if let Some(home) = var("HOME") {
            return Ok(PathBuf::from(home).join(".cache/autoprune"));
        }
        if let Some(d) = var("XDG_RUNTIME_DIR") {
            return Ok(PathBuf::from(d).join("autoprune"));
        }
        Err(CacheError::NoHome)
    }

    /// Open (creating if needed, mode 0700) a cache in `dir`; refuse one that is not this
    /// user's alone.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, CacheError> {
        let dir = dir.into();
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io(&dir))?;
        check_private(&dir, true)?;
        let artifacts = dir.join("artifacts");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&artifacts)
            .or_else(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => Ok(()),
                _ => Err(e),
            })
            .map_err(io(&artifacts))?;
        check_private(&artifacts, true)?;
        let key = Self::load_or_create_key(&dir.join("host.key"))?;
        let cache = Self {
            dir,
            key,
            max_bytes: MAX_CACHE_BYTES,
            writes: Default::default(),
        };
        cache.evict();
        Ok(cache)
    }

    /// The same cache with another size bound (tests).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// Read the key (not through a link, owned by us, mode 0600, 32 bytes), or create it
    /// exclusively: written to a private temporary file, then hard-linked into place, so a
    /// concurrent reader never sees a half-written key and a planted file is never replaced.
    fn load_or_create_key(path: &Path) -> Result<[u8; 32], CacheError> {
        let io = |source| CacheError::Io {
            path: path.to_path_buf(),
            source,
        };
        let untrusted = |reason: String| CacheError::Untrusted {
            path: path.to_path_buf(),
            reason,
            uid: euid(),
        };
        for _ in 0..2 {
            let opened = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(path);
            match opened {
                Ok(f) => {
                    let meta = f.metadata().map_err(io)?;
                    check_meta(&meta, false).map_err(untrusted)?;
                    if meta.len() != 32 {
                        return Err(untrusted(format!(
                            "the key is {} bytes, not 32",
                            meta.len()
                        )));
                    }
                    let mut key = [0u8; 32];
                    std::io::Read::read_exact(&mut &f, &mut key).map_err(io)?;
                    return Ok(key);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let mut key = [0u8; 32];
                    std::io::Read::read_exact(
                        &mut std::fs::File::open("/dev/urandom").map_err(io)?,
                        &mut key,
                    )
                    .map_err(io)?;
                    let dir = path.parent().unwrap_or(Path::new("."));
                    // NamedTempFile: O_CREAT | O_EXCL, mode 0600.
                    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
                    tmp.write_all(&key).map_err(io)?;
                    tmp.as_file().sync_all().map_err(io)?;
                    match std::fs::hard_link(tmp.path(), path) {
                        Ok(()) => return Ok(key),
                        // Another process created it first: read theirs.
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                        Err(e) => return Err(io(e)),
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    return Err(untrusted("the key is a symbolic link".into()))
                }
                Err(e) => return Err(io(e)),
            }
        }
        Err(untrusted("the key vanished while it was created".into()))
    }

    /// The HMAC tag of `data` under this cache's key (for other authenticated files, such as
    /// the staged SDK's fingerprint).
    pub fn tag(&self, data: &[u8]) -> String {
        hex::encode(hmac(&self.key, data))
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &str, ext: &str) -> PathBuf {
        self.dir.join("artifacts").join(format!("{key}.{ext}"))
    }

    /// Read an entry; `None` when absent or when its tag does not verify. A hit marks the
    /// entry as recently used (its modification time), for eviction.
    pub fn get(&self, key: &str, ext: &str) -> Option<Vec<u8>> {
        let path = self.path(key, ext);
        let mut data = crate::files::read_nofollow(&path, self.max_bytes).ok()?;
        if data.len() < TAG_LEN {
            return None;
        }
        let tag = data.split_off(data.len() - TAG_LEN);
        // Constant-time comparison is not needed: the key never leaves this host.
        let ok = hmac(&self.key, &data)[..] == tag[..];
        if ok {
            if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                let _ = f.set_modified(std::time::SystemTime::now());
            }
        }
        ok.then_some(data)
    }

    /// Store an entry atomically (write to a temporary file, then rename).
    pub fn put(&self, key: &str, ext: &str, data: &[u8]) -> std::io::Result<()> {
        let dest = self.path(key, ext);
        let mut tmp = tempfile::NamedTempFile::new_in(self.dir.join("artifacts"))?;
        tmp.write_all(data)?;
        tmp.write_all(&hmac(&self.key, data))?;
        tmp.persist(dest).map_err(|e| e.error)?;
        if self.writes.fetch_add(1, Ordering::Relaxed) % EVICT_EVERY == EVICT_EVERY - 1 {
            self.evict();
        }
        Ok(())
    }

    /// Remove the least recently used entries of [`BOUNDED_DIRS`] until they hold at most
    /// 3/4 of the bound (best effort: a cache that cannot be cleaned only costs disk).
    pub fn evict(&self) {
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = BOUNDED_DIRS
            .iter()
            .filter_map(|d| std::fs::read_dir(self.dir.join(d)).ok())
            .flat_map(|rd| rd.flatten())
            .filter_map(|e| {
                let m = e.metadata().ok().filter(|m| m.is_file())?;
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        if total <= self.max_bytes {
            return;
        }
        entries.sort();
        let goal = self.max_bytes / 4 * 3;
        for (_, len, path) in entries {
            if total <= goal {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }

    /// Compile `bytes`, or load the native code this host compiled for them before.
    pub fn component(&self, bytes: &[u8]) -> Result<Component, Failure> {
        let key =
            sha256_hex(format!("{}\n", engine_fingerprint()).as_bytes()) + &sha256_hex(bytes)[..32];
        if let Some(cwasm) = self.get(&key, "cwasm") {
            // SAFETY: the tag proves this host serialized these bytes with this engine
            // configuration (the fingerprint is part of the key).
            if let Ok(c) = unsafe { Component::deserialize(engine(), &cwasm) } {
                return Ok(c);
            }
        }
        let component = compile(bytes)?;
        if let Ok(cwasm) = component.serialize() {
            // A cache that cannot be written only costs speed.
            let _ = self.put(&key, "cwasm", &cwasm);
        }
        Ok(component)
    }
}

/// The effective user id.
fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `Err(reason)` unless `meta` belongs to this user and no one else may write it (and, for the
/// key, read it).
fn check_meta(meta: &std::fs::Metadata, dir: bool) -> Result<(), String> {
    if meta.uid() != euid() {
        return Err(format!("it belongs to uid {}", meta.uid()));
    }
    if dir != meta.is_dir() || meta.file_type().is_symlink() {
        return Err(format!(
            "it is not a {}",
            if dir { "folder" } else { "regular file" }
        ));
    }
    let forbidden = if dir { 0o022 } else { 0o077 };
    if meta.mode() & forbidden != 0 {
        return Err(format!("its mode is {:o}", meta.mode() & 0o7777));
    }
    Ok(())
}

/// Refuse a folder (not followed if it is a link) that is not this user's alone.
fn check_private(path: &Path, dir: bool) -> Result<(), CacheError> {
    let meta = std::fs::symlink_metadata(path).map_err(|source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    check_meta(&meta, dir).map_err(|reason| CacheError::Untrusted {
        path: path.to_path_buf(),
        reason,
        uid: euid(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231_case_2_shape() {
        // RFC 4231 uses other key lengths; check our construction against a direct computation.
        let key = [7u8; 32];
        let tag = hmac(&key, b"data");
        assert_eq!(tag, hmac(&key, b"data"));
        assert_ne!(tag, hmac(&[8u8; 32], b"data"));
    }

    #[test]
    fn tampered_entries_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path()).unwrap();
        cache.put("k", "bin", b"hello").unwrap();
        assert_eq!(cache.get("k", "bin").as_deref(), Some(&b"hello"[..]));
        let p = cache.path("k", "bin");
        let mut raw = std::fs::read(&p).unwrap();
        raw[0] ^= 1;
        std::fs::write(&p, raw).unwrap();
        assert_eq!(cache.get("k", "bin"), None);
        // A second cache with another key does not accept the first one's files.
        let other_dir = tempfile::tempdir().unwrap();
        let other = ArtifactCache::open(other_dir.path()).unwrap();
        std::fs::copy(cache.path("k", "bin"), other.path("k", "bin")).unwrap();
        assert_eq!(other.get("k", "bin"), None);
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn created_private_and_refused_when_shared() {
        let dir = tempfile::tempdir().unwrap();
        let c = dir.path().join("a/b/cache");
        ArtifactCache::open(&c).unwrap();
        assert_eq!(mode(&c), 0o700);
        assert_eq!(mode(&c.join("artifacts")), 0o700);
        assert_eq!(mode(&c.join("host.key")), 0o600);
        // Writable by others: refused.
        std::fs::set_permissions(&c, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let e = ArtifactCache::open(&c).unwrap_err();
        assert!(matches!(e, CacheError::Untrusted { .. }), "{e}");
        std::fs::set_permissions(&c, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        // A key others can read: refused (not replaced).
        let key = c.join("host.key");
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
        assert!(matches!(
            ArtifactCache::open(&c),
            Err(CacheError::Untrusted { .. })
        ));
        // A key that is a link to a file elsewhere: refused, never followed or replaced.
        std::fs::remove_file(&key).unwrap();
        let planted = dir.path().join("planted.key");
        std::fs::write(&planted, [7u8; 32]).unwrap();
        std::fs::set_permissions(
            &planted,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink(&planted, &key).unwrap();
        let e = ArtifactCache::open(&c).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read(&planted).unwrap(), [7u8; 32]);
        // Owned by someone else (needs root to arrange).
        if euid() == 0 {
            let other = dir.path().join("other");
            std::fs::create_dir(&other).unwrap();
            std::os::unix::fs::chown(&other, Some(65534), Some(65534)).unwrap();
            let e = ArtifactCache::open(&other).unwrap_err();
            assert!(e.to_string().contains("belongs to uid 65534"), "{e}");
        }
    }

    #[test]
    fn concurrent_opens_share_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys: Vec<[u8; 32]> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| ArtifactCache::open(dir.path()).unwrap().key))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(keys.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn eviction_keeps_the_recently_used_under_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ArtifactCache::open(dir.path())
            .unwrap()
            .with_max_bytes(10_000);
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for i in 0..20 {
            cache
                .put(&format!("k{i}"), "bin", &[i as u8; 1000])
                .unwrap();
            let f = std::fs::File::options()
                .append(true)
                .open(cache.path(&format!("k{i}"), "bin"))
                .unwrap();
            f.set_modified(old + std::time::Duration::from_secs(i))
                .unwrap();
        }
        // k0 is the oldest but used now: it stays.
        assert!(cache.get("k0", "bin").is_some());
        cache.evict();
        let total: u64 = std::fs::read_dir(dir.path().join("artifacts"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(total <= 7_500, "{total}");
        assert!(cache.get("k0", "bin").is_some());
        assert!(cache.get("k19", "bin").is_some());
        assert!(cache.get("k1", "bin").is_none());
    }
}
