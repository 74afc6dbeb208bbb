//! The one error type of the library. Every bad input comes back as one of these; nothing panics.

use std::fmt;

/// Everything that can go wrong in deepml, each with a message that says what and where.
/// [`Error::error_kind`] sorts them into the few categories a caller acts on.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// Two inputs that are paired element by element have different shapes, or a shape does not
    /// fit the loss (wrong rank, wrong width).
    ShapeMismatch(String),
    /// A tensor that must hold elements holds none (an empty batch, a zero dimension).
    EmptyInput(String),
    /// A constructor argument outside its domain: negative or non-finite eps, unknown loss type.
    InvalidConfig(String),
    /// A class label outside `[0, classes)` that is not the `ignore_index`.
    LabelOutOfRange(String),
    /// Any other input the loss cannot take (wrong dtype, a weight vector of the wrong length).
    InvalidInput(String),
    /// No adapter matched the request (none found, or none of the asked-for backend or name).
    NoAdapter(String),
    /// A tensor larger than the device can hold, refused before any allocation.
    TooLarge(String),
    /// A wgpu validation or out-of-memory error, caught with an error scope (or one of the
    /// device's uncaptured errors); the wgpu error is its [`std::error::Error::source`].
    Wgpu(WgpuError),
    /// The device was lost; the context cannot be used any more, a new one can be created.
    DeviceLost(String),
    /// A deepml-cases file that cannot be read.
    Cases(String),
}

/// The category of an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A bad shape, dtype, label or tensor: `ShapeMismatch`, `EmptyInput`, `LabelOutOfRange`,
    /// `InvalidInput`.
    InvalidInput,
    /// A constructor argument outside its domain.
    InvalidConfig,
    /// No adapter matched the request.
    NoAdapter,
    /// Larger than the device can hold.
    TooLarge,
    /// A wgpu error.
    Wgpu,
    /// The device is gone.
    DeviceLost,
    /// A cases file that cannot be read.
    Cases,
}

impl ErrorKind {
    /// Its name in the `deepml-cases/1` format (`invalid_input`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidInput => "invalid_input",
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::NoAdapter => "no_adapter",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Wgpu => "wgpu",
            ErrorKind::DeviceLost => "device_lost",
            ErrorKind::Cases => "cases",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A wgpu error as deepml keeps it: its message, and its source chain captured as messages
/// (wgpu's own error is neither `Clone` nor `Sync`).
#[derive(Debug, Clone, PartialEq)]
pub struct WgpuError {
    message: String,
    source: Option<Box<WgpuError>>,
}

impl WgpuError {
    /// An error with a message and no source.
    pub fn msg(message: impl Into<String>) -> Self {
        WgpuError {
            message: message.into(),
            source: None,
        }
    }
    /// A captured copy of `e` and its source chain.
    pub fn capture(e: &(dyn std::error::Error + 'static)) -> Self {
        WgpuError {
            message: e.to_string(),
            source: e.source().map(|s| Box::new(WgpuError::capture(s))),
        }
    }
    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for WgpuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for WgpuError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as _)
    }
}

impl Error {
    /// A [`Error::Wgpu`] with a message and no source.
    pub(crate) fn wgpu(message: impl Into<String>) -> Self {
        Error::Wgpu(WgpuError::msg(message))
    }

    /// The category of this error.
    pub fn error_kind(&self) -> ErrorKind {
        match self {
            Error::ShapeMismatch(_)
            | Error::EmptyInput(_)
            | Error::LabelOutOfRange(_)
            | Error::InvalidInput(_) => ErrorKind::InvalidInput,
            Error::InvalidConfig(_) => ErrorKind::InvalidConfig,
            Error::NoAdapter(_) => ErrorKind::NoAdapter,
            Error::TooLarge(_) => ErrorKind::TooLarge,
            Error::Wgpu(_) => ErrorKind::Wgpu,
            Error::DeviceLost(_) => ErrorKind::DeviceLost,
            Error::Cases(_) => ErrorKind::Cases,
        }
    }

    /// The error kind of the `deepml-cases/1` format: `invalid_input`, `invalid_config`, or the
    /// name of a device-side failure.
    pub fn kind(&self) -> &'static str {
        self.error_kind().as_str()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, msg) = match self {
            Error::ShapeMismatch(m) => ("shape mismatch", m),
            Error::EmptyInput(m) => ("empty input", m),
            Error::InvalidConfig(m) => ("invalid config", m),
            Error::LabelOutOfRange(m) => ("label out of range", m),
            Error::InvalidInput(m) => ("invalid input", m),
            Error::NoAdapter(m) => ("no adapter", m),
            Error::TooLarge(m) => ("tensor too large for the device", m),
            Error::Wgpu(m) => ("wgpu error", &m.message),
            Error::DeviceLost(m) => ("device lost", m),
            Error::Cases(m) => ("cases file", m),
        };
        write!(f, "{what}: {msg}")
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Wgpu(e) => Some(e),
            _ => None,
        }
    }
}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;
