//! The crate's error type: an [`Error`] wrapping a `#[non_exhaustive]` [`ErrorKind`].
//!
//! Every message says what was given and what was expected, so a user can fix the input
//! without reading the source.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// An error from validating input, parsing a spec or running a variant.
///
/// Errors that wrap another (a failed read or write, a CSV or JSON error) keep it as their
/// [`source`](std::error::Error::source). Two errors are equal when their kinds are.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl PartialEq for Error {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
    }
}

/// What went wrong. New kinds may be added without a breaking change.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A tensor did not have the expected number of axes.
    Rank {
        /// Which tensor (`"q"`, `"k"`, `"v"`, `"out"`).
        tensor: &'static str,
        /// The expected number of axes.
        expected: usize,
        /// The shape that was given.
        got: Vec<usize>,
    },
    /// A tensor had an axis of length zero.
    ZeroDim {
        /// Which tensor.
        tensor: &'static str,
        /// The name of the axis (`"batch"`, `"heads"`, `"seq"`, `"head_dim"`).
        axis: &'static str,
        /// The shape that was given.
        shape: Vec<usize>,
    },
    /// Two tensors disagree on an axis they must share.
    ShapeMismatch {
        /// What must agree, e.g. `"k and v: kv_heads"`.
        what: String,
        /// The expected length.
        expected: usize,
        /// The length that was given.
        got: usize,
    },
    /// The number of query heads is not a multiple of the number of key/value heads.
    HeadsNotMultiple {
        /// Query heads.
        heads: usize,
        /// Key/value heads.
        kv_heads: usize,
    },
    /// A tensor holds NaN or infinity.
    NonFinite {
        /// Which tensor.
        tensor: &'static str,
        /// The index `[b, h, s, d]` of the first non-finite element.
        index: [usize; 4],
        /// The offending value.
        value: f32,
    },
    /// Finite inputs whose scores or weighted sums could overflow `f32`.
    InputRange {
        /// What would overflow, with the magnitudes involved.
        message: String,
    },
    /// An option is out of its valid range.
    BadOption {
        /// The option's name.
        option: &'static str,
        /// Why its value is invalid.
        message: String,
    },
    /// The variant cannot run this shape or these options.
    Unsupported {
        /// The variant's spec string.
        variant: String,
        /// All reasons it gave.
        reasons: Vec<String>,
    },
    /// A spec string names no registered variant.
    UnknownVariant {
        /// The name that was given.
        name: String,
        /// The registered names.
        known: Vec<String>,
    },
    /// A spec string is malformed, names an unknown parameter or gives an invalid value.
    BadSpec {
        /// The spec string that was given.
        spec: String,
        /// What is wrong with it.
        message: String,
    },
    /// Reading or writing a file failed.
    Io {
        /// The file involved.
        path: String,
        /// The underlying error's message.
        message: String,
    },
    /// A multi-head layer's configuration, weights or inputs are inconsistent.
    Layer {
        /// What is wrong, naming the sizes involved.
        message: String,
    },
    /// A command or function was given nothing to work on.
    NoInput {
        /// What was missing, e.g. `"results CSV files to report"`.
        what: &'static str,
    },
    /// An index is outside its axis.
    OutOfRange {
        /// What was indexed, e.g. `"batch"`.
        what: &'static str,
        /// The index given.
        index: usize,
        /// The length of the axis.
        len: usize,
    },
    /// A variant panicked (a bug in the variant; the sweep records it and goes on).
    Panicked {
        /// The variant's spec string.
        variant: String,
        /// The panic message.
        message: String,
    },
    /// A data file is malformed.
    Format {
        /// The file involved.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

impl Error {
    /// Creates an error of the given kind.
    pub fn new(kind: ErrorKind) -> Self {
        Self { kind, source: None }
    }

    /// An [`ErrorKind::Format`] error: `path` is malformed, `message` says where and how,
    /// and `cause` (the parser's error) is kept as the source.
    pub fn format(
        path: &Path,
        message: impl Into<String>,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            kind: ErrorKind::Format {
                path: path.display().to_string(),
                message: message.into(),
            },
            source: Some(Arc::from(cause.into())),
        }
    }

    /// An [`ErrorKind::Io`] error on `path`, keeping `cause` as the source.
    pub fn io(
        path: &Path,
        cause: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        let cause: Arc<dyn std::error::Error + Send + Sync> = Arc::from(cause.into());
        Self {
            kind: ErrorKind::Io {
                path: path.display().to_string(),
                message: cause.to_string(),
            },
            source: Some(cause),
        }
    }

    /// The kind of this error.
    pub fn kind(&self) -> &ErrorKind {
        &self.kind
    }

    /// Shorthand for [`ErrorKind::BadSpec`].
    pub fn bad_spec(spec: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadSpec {
            spec: spec.into(),
            message: message.into(),
        })
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Self::new(kind)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Rank {
                tensor,
                expected,
                got,
            } => write!(
                f,
                "{tensor} must have {expected} axes [batch, heads, seq, head_dim], got shape {got:?} ({} axes)",
                got.len()
            ),
            ErrorKind::ZeroDim {
                tensor,
                axis,
                shape,
            } => write!(
                f,
                "{tensor} has a zero-length {axis} axis (shape {shape:?}); every axis must be at least 1"
            ),
            ErrorKind::ShapeMismatch {
                what,
                expected,
                got,
            } => write!(
                f,
                "shape mismatch in {what}: expected {expected}, got {got}"
            ),
            ErrorKind::HeadsNotMultiple { heads, kv_heads } => write!(
                f,
                "q has {heads} heads, which is not a multiple of the {kv_heads} key/value heads of k and v"
            ),
            ErrorKind::NonFinite {
                tensor,
                index,
                value,
            } => write!(
                f,
                "{tensor} holds a non-finite value {value} at [b, h, s, d] = {index:?}; inputs must be finite"
            ),
            ErrorKind::InputRange { message } => {
                write!(f, "inputs out of range for f32 attention: {message}")
            }
            ErrorKind::BadOption { option, message } => {
                write!(f, "invalid option {option}: {message}")
            }
            ErrorKind::Unsupported { variant, reasons } => {
                write!(f, "{variant} cannot run this input: {}", reasons.join("; "))
            }
            ErrorKind::UnknownVariant { name, known } => write!(
                f,
                "unknown variant '{name}'; known variants: {}",
                known.join(", ")
            ),
            ErrorKind::BadSpec { spec, message } => write!(f, "bad spec '{spec}': {message}"),
            ErrorKind::Io { path, message } => write!(f, "{path}: {message}"),
            ErrorKind::Format { path, message } => write!(f, "{path}: {message}"),
            ErrorKind::Layer { message } => write!(f, "multi-head layer: {message}"),
            ErrorKind::NoInput { what } => write!(f, "no {what} given"),
            ErrorKind::OutOfRange { what, index, len } => write!(
                f,
                "{what} {index} is out of range: there are {len} (0..{len})"
            ),
            ErrorKind::Panicked { variant, message } => {
                write!(f, "{variant} panicked: {message}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The message of a caught panic (its `&str` or `String` payload).
pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
