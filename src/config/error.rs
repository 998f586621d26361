//! Config errors as the user sees them: `FILE:LINE:COL: field.path: reason`.
//!
//! Deserialization and validation produce [`Issue`]s, which know only a field
//! path; `config::parse_str` gives each its file position from the source map,
//! so every stage reports in one format and positions come from one place.

use std::fmt;

/// One problem in a config file, with where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}:{column}: {path}: {reason}")]
pub struct ConfigError {
    /// The file as the user named it (or the name given to `parse_str`).
    pub file: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters.
    pub column: usize,
    /// The field, as in `services[0].versions[1].weight`; `(file)` for an error
    /// about the file as a whole (unreadable, empty, not YAML).
    pub path: String,
    /// What is wrong and, where it is not obvious, what to do.
    pub reason: String,
}

/// Every problem found in one config, in file order. Never empty when
/// returned by `load_file` or `parse_str`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One error per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

/// Which position of a mapping entry an issue points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Anchor {
    /// The value (or the mapping or sequence) at the path: most problems.
    Value,
    /// The key itself: an unknown field, where the key is what is wrong.
    Key,
}

/// A problem before it has a file position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Issue {
    pub path: String,
    pub reason: String,
    pub anchor: Anchor,
}

impl Issue {
    pub(crate) fn at(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Issue {
            path: path.into(),
            reason: reason.into(),
            anchor: Anchor::Value,
        }
    }
}
