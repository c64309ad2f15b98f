//! Problems in a topology file, each with its place (`nodes[2].processor`) and line.

use std::fmt;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where: `nodes[2].processor`.
    pub path: String,
    /// Line in the file (1-based), when found.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}: {}", self.path, self.message),
            None => write!(f, "{}: {}", self.path, self.message),
        }
    }
}

/// Every problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors {
    /// The file, when loaded from one.
    pub file: Option<String>,
    /// The problems, in file order.
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// `errors` in file order (those without a line last), or `Ok` when there are none.
    pub(crate) fn check(file: Option<String>, mut errors: Vec<ConfigError>) -> Result<(), Self> {
        if errors.is_empty() {
            return Ok(());
        }
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        Err(Self { file, errors })
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.as_deref().unwrap_or("<topology>");
        writeln!(f, "{} problem(s) in {file}:", self.errors.len())?;
        for e in &self.errors {
            writeln!(f, "  {file}: {e}")?;
        }
        Ok(())
    }
}
