//! Errors of the data module. Each message names the file, says what is
//! wrong with it, and (in `hint`) how to get a good copy of the data.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// No file under any of the accepted names.
    #[error("{}: file not found{tried}; {hint}", path.display())]
    Missing {
        path: PathBuf,
        /// `""` or `" (also tried: a, b)"`.
        tried: String,
        hint: String,
    },

    /// The file exists but could not be read.
    #[error("{}: cannot read: {source}; {hint}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
        hint: String,
    },

    /// The file starts like gzip but does not decompress.
    #[error(
        "{}: corrupt or truncated gzip stream (failed after {at} decompressed bytes: {msg}); {hint}",
        path.display()
    )]
    Gzip {
        path: PathBuf,
        at: u64,
        msg: String,
        hint: String,
    },

    /// Fewer bytes than the header (or the record size) requires.
    #[error("{}: truncated at byte {len}, expected {expected} bytes ({what}); {hint}", path.display())]
    Truncated {
        path: PathBuf,
        len: u64,
        expected: u64,
        /// What the expected size is made of, e.g. `16-byte header + 60000 × 28 × 28 pixels`.
        what: String,
        hint: String,
    },

    /// More bytes than the header says.
    #[error("{}: {len} bytes, expected {expected} ({what}): trailing data; {hint}", path.display())]
    TrailingData {
        path: PathBuf,
        len: u64,
        expected: u64,
        what: String,
        hint: String,
    },

    #[error("{}: bad magic 0x{found:08x}, expected 0x{expected:08x} ({what}); {hint}", path.display())]
    BadMagic {
        path: PathBuf,
        found: u32,
        expected: u32,
        what: String,
        hint: String,
    },

    /// A header field with an impossible value (dimensions, zero samples).
    #[error("{}: bad header: {msg}; {hint}", path.display())]
    BadHeader {
        path: PathBuf,
        msg: String,
        hint: String,
    },

    /// The image and label files of one split disagree on the sample count.
    #[error(
        "count mismatch: {} holds {n_images} images but {} holds {n_labels} labels; {hint}",
        images.display(),
        labels.display()
    )]
    CountMismatch {
        images: PathBuf,
        labels: PathBuf,
        n_images: u64,
        n_labels: u64,
        hint: String,
    },

    #[error(
        "{}: label {label} of sample {index} is out of range (expected 0..{classes}); {hint}",
        path.display()
    )]
    LabelOutOfRange {
        path: PathBuf,
        index: usize,
        label: u64,
        classes: usize,
        hint: String,
    },

    /// A malformed line in a CSV file.
    #[error("{}: line {line}: {msg}; {hint}", path.display())]
    Csv {
        path: PathBuf,
        line: usize,
        msg: String,
        hint: String,
    },

    /// A record or field that makes no sense at a known byte offset (an
    /// event-stream packet whose sizes disagree, an impossible coordinate).
    #[error("{}: malformed at byte {at}: {msg}; {hint}", path.display())]
    Malformed {
        path: PathBuf,
        at: u64,
        msg: String,
        hint: String,
    },

    /// A request the data cannot satisfy (e.g. augmenting a flat feature
    /// vector), or a dataset whose fields disagree.
    #[error("{what}")]
    Invalid { what: String },

    /// A model whose input is not event frames, given event data.
    #[error(
        "event data needs a model input of 2 polarity channels, C×H×W = 2×H×W; the model's \
         input is {}",
        crate::shape::list(input)
    )]
    EventInput { input: Vec<usize> },

    #[error("cannot create `{}`: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write `{}`: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A synthetic sample that cannot be written in its format.
    #[error("sample {sample}: {source}")]
    Sample {
        sample: usize,
        #[source]
        source: super::events::EventError,
    },

    /// A file whose extension names no known format.
    #[error(
        "{}: unknown event file type `.{ext}`; expected .bin (N-MNIST), .aedat \
         (AEDAT 2.0 or 3.1) or .npy (N×4 t, x, y, p)",
        path.display()
    )]
    UnknownFormat { path: PathBuf, ext: String },

    /// An image folder, or one of its class folders, without a usable image.
    #[error("{}: no images: {what}; {hint}", path.display())]
    NoImages {
        path: PathBuf,
        what: String,
        hint: String,
    },

    /// A directory (or another non-file) where a data file is expected.
    #[error("{}: {what}, not an event file; {hint}", path.display())]
    NotAFile {
        path: PathBuf,
        /// `"a directory"` or `"not a regular file"`.
        what: String,
        hint: String,
    },

    /// An event file without a single event: empty, a header alone, only
    /// timestamp-overflow markers.
    #[error("{}: no events: {what}; {hint}", path.display())]
    NoEvents {
        path: PathBuf,
        /// The file's size in bytes (0: an empty file).
        len: u64,
        what: String,
        hint: String,
    },

    /// An event file of which more than `max_percent` % of the events are
    /// invalid (outside the sensor, bad polarity or address, timestamps
    /// out of order or far outside the recording): refused as a whole.
    #[error(
        "{}: {invalid} of {total} events invalid, more than {max_percent} %: file refused \
         ({}){note}; {hint}",
        path.display(),
        dropped.detailed()
    )]
    MostlyInvalid {
        path: PathBuf,
        invalid: usize,
        total: usize,
        max_percent: usize,
        /// The invalid events by reason.
        dropped: Box<super::events::Dropped>,
        /// `""` or `"; …"`: what the file may be instead.
        note: String,
        hint: String,
    },

    /// An event file whose events span more time than a sample can hold.
    #[error(
        "{}: events span {span_us} µs ({:.1} min), more than the 2^32 µs (71.6 min) snnc holds \
         per sample; {hint}",
        path.display(),
        *span_us as f64 / 60e6
    )]
    TooLong {
        path: PathBuf,
        span_us: u64,
        hint: String,
    },

    /// An event dataset folder in which more than the allowed share of the
    /// files were rejected.
    #[error(
        "{}: {summary}: more than {max_percent} % of the files, dataset refused; fix or remove \
         them:\n{files}\n{hint}",
        path.display()
    )]
    TooManyRejected {
        path: PathBuf,
        /// `"3 of 120 files rejected (…); …"`.
        summary: String,
        max_percent: usize,
        /// One line per rejected file (the first few).
        files: String,
        hint: String,
    },
}
