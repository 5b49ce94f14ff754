//! Reading files the host did not write: the size is checked before anything is read, the
//! read itself stops at the limit, and only regular files are read (a FIFO or device never
//! blocks or floods the host). [`read_nofollow`] also refuses a symbolic link in the last
//! component, for files the host expects to have created itself.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Opening or reading failed.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is larger than the caller accepts (checked before reading, and while reading).
    #[error("{path} is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size (at least this much, when it grew while being read).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A directory, FIFO, socket or device where a regular file was expected.
    #[error("{path} is not a regular file")]
    NotRegular {
        /// The path.
        path: PathBuf,
    },
}

fn open(path: &Path, nofollow: bool) -> Result<File, FileError> {
    let mut opts = std::fs::OpenOptions::new();
    // O_NONBLOCK: opening a FIFO for reading must not wait for a writer (it is refused below).
    let mut flags = libc::O_NONBLOCK;
    if nofollow {
        flags |= libc::O_NOFOLLOW;
    }
    opts.read(true).custom_flags(flags);
    opts.open(path).map_err(|source| FileError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_open(file: File, path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    let io = |source| FileError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(FileError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    let too_large = |size| FileError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit,
    };
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    // One byte past the limit tells a file that grew after the check.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() as u64 > limit {
        return Err(too_large(buf.len() as u64));
    }
    Ok(buf)
}

/// Read a regular file of at most `limit` bytes (symbolic links are followed).
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    read_open(open(path, false)?, path, limit)
}

/// [`read_limited`] without following a symbolic link in the last path component.
pub fn read_nofollow(path: &Path, limit: u64) -> Result<Vec<u8>, FileError> {
    read_open(open(path, true)?, path, limit)
}

/// [`read_limited`] as UTF-8 text.
pub fn read_text_limited(path: &Path, limit: u64) -> Result<String, FileError> {
    String::from_utf8(read_limited(path, limit)?).map_err(|e| FileError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error()),
    })
}

/// The size of the regular file at `path` (symbolic links followed), without reading it.
pub fn regular_file_size(path: &Path) -> Result<u64, FileError> {
    let meta = open(path, false)?
        .metadata()
        .map_err(|source| FileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    if !meta.is_file() {
        return Err(FileError::NotRegular {
            path: path.to_path_buf(),
        });
    }
    Ok(meta.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_apply_before_and_while_reading() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"hello").unwrap();
        assert_eq!(read_limited(&f, 5).unwrap(), b"hello");
        assert!(matches!(
            read_limited(&f, 4),
            Err(FileError::TooLarge {
                size: 5,
                limit: 4,
                ..
            })
        ));
        // A sparse 40 GB file is refused from its size alone, without a read.
        let big = dir.path().join("big.wasm");
        std::fs::File::create(&big)
            .unwrap()
            .set_len(40_000_000_000)
            .unwrap();
        let t = std::time::Instant::now();
        assert!(matches!(
            read_limited(&big, 16 << 20),
            Err(FileError::TooLarge {
                size: 40_000_000_000,
                ..
            })
        ));
        assert!(t.elapsed().as_millis() < 500);
        assert!(matches!(
            read_limited(dir.path(), 10),
            Err(FileError::NotRegular { .. })
        ));
    }

    #[test]
    fn nofollow_refuses_links_and_fifos_do_not_block() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(read_limited(&link, 10).unwrap(), b"x");
        assert!(matches!(
            read_nofollow(&link, 10),
            Err(FileError::Io { .. })
        ));
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read_limited(&fifo, 10),
            Err(FileError::NotRegular { .. })
        ));
    }
}
