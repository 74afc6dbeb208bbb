//! The one error type of the library. Every bad input comes back as one of these; nothing panics.

use std::fmt;

/// Everything that can go wrong in deepml, each with a message that says what and where.
#[derive(Debug, Clone, PartialEq)]
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
    /// A wgpu validation or out-of-memory error, caught with an error scope.
    Wgpu(String),
    /// The device was lost; the context cannot be used any more, a new one can be created.
    DeviceLost(String),
    /// A deepml-cases file that cannot be read.
    Cases(String),
}

impl Error {
    /// The error kind of the `deepml-cases/1` format: `invalid_input`, `invalid_config`, or the
    /// name of a device-side failure.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::ShapeMismatch(_)
            | Error::EmptyInput(_)
            | Error::LabelOutOfRange(_)
            | Error::InvalidInput(_) => "invalid_input",
            Error::InvalidConfig(_) => "invalid_config",
            Error::NoAdapter(_) => "no_adapter",
            Error::TooLarge(_) => "too_large",
            Error::Wgpu(_) => "wgpu",
            Error::DeviceLost(_) => "device_lost",
            Error::Cases(_) => "cases",
        }
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
            Error::Wgpu(m) => ("wgpu error", m),
            Error::DeviceLost(m) => ("device lost", m),
            Error::Cases(m) => ("cases file", m),
        };
        write!(f, "{what}: {msg}")
    }
}

impl std::error::Error for Error {}

/// The library's result type.
pub type Result<T> = std::result::Result<T, Error>;
