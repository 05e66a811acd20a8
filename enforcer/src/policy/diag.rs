//! Messages about a policy file, each naming FILE:LINE:COL.

use std::{fmt, path::Path};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub severity: Severity,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {sev}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// A policy that cannot be used, with every problem found.
#[derive(Debug, thiserror::Error)]
pub struct PolicyError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Turns byte offsets of one source text into 1-based line and column numbers.
pub struct Locator<'a> {
    pub file: String,
    pub text: &'a str,
    /// Byte offset where each line starts: a lookup is a binary search, so locating every
    /// entry of a large policy stays linear overall.
    line_starts: Vec<usize>,
}

impl<'a> Locator<'a> {
    pub fn new(path: &Path, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Locator {
            file: path.display().to_string(),
            text,
            line_starts,
        }
    }

    pub fn at(&self, offset: usize, severity: Severity, message: impl Into<String>) -> Diagnostic {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let col = offset - self.line_starts[line - 1] + 1;
        Diagnostic {
            file: self.file.clone(),
            line,
            col,
            severity,
            message: message.into(),
        }
    }
}
