//! Errors a metric reports to the host (the WIT `error` variant).

use std::fmt;

/// `Result` with the SDK's [`Error`].
pub type Result<T> = core::result::Result<T, Error>;

/// An error the metric returns from [`Metric::score`](crate::Metric::score), or receives from the
/// host; it reaches the host as the WIT `error` variant, a verdict the search can read.
///
/// ```
/// use autoprune_sdk::prelude::*;
///
/// struct SquareOnly;
/// impl Metric for SquareOnly {
///     fn info() -> Info { Info::new("square-only", "0.1.0", "|W| on square layers") }
///     fn score(layer: &Layer) -> Result<()> {
///         let info = layer.info();
///         if info.rows != info.cols {
///             return Err(Error::unsupported(format!("{}x{} is not square", info.rows, info.cols)));
///         }
///         layer.score_rows(|row, out| for (o, w) in out.iter_mut().zip(row.weights) { *o = w.abs() })
///     }
/// }
///
/// let layer = autoprune_sdk::testing::TestLayer::new(1, 2, vec![1.0, -2.0]);
/// let err = autoprune_sdk::testing::run::<SquareOnly>(&layer).unwrap_err();
/// assert_eq!(err, Error::unsupported("1x2 is not square"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Error {
    /// The metric cannot score a layer like this one.
    Unsupported(String),
    /// An argument or input was not valid (e.g. a tile outside the layer).
    InvalidInput(String),
    /// Any other failure.
    Failed(String),
}

impl Error {
    /// The metric cannot score a layer like this one.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Error::Unsupported(message.into())
    }

    /// An argument or input was not valid.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Error::InvalidInput(message.into())
    }

    /// Any other failure.
    pub fn failed(message: impl Into<String>) -> Self {
        Error::Failed(message.into())
    }

    /// The message without its kind.
    pub fn message(&self) -> &str {
        match self {
            Error::Unsupported(m) | Error::InvalidInput(m) | Error::Failed(m) => m,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Error::Unsupported(_) => "unsupported",
            Error::InvalidInput(_) => "invalid input",
            Error::Failed(_) => "failed",
        };
        write!(f, "{kind}: {}", self.message())
    }
}

impl std::error::Error for Error {}
