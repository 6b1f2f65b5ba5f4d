//! Printing for people or for programs (`--json`: one object per line).

use std::io::Write;

use serde_json::{Value, json};

/// Where command output goes: stdout, as text or JSON lines.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Output {
    json: bool,
}

impl Output {
    /// Text output, or JSON lines when `json`.
    pub(crate) fn new(json: bool) -> Self {
        Self { json }
    }

    /// Whether output is JSON.
    pub(crate) fn is_json(&self) -> bool {
        self.json
    }

    /// Prints `human` as text, or `event` as one JSON line.
    pub(crate) fn emit(&self, human: impl std::fmt::Display, event: Value) {
        let mut stdout = std::io::stdout().lock();
        // A closed stdout (e.g. `| head`) is not worth failing over.
        let _ = if self.json {
            writeln!(stdout, "{event}")
        } else {
            writeln!(stdout, "{human}")
        };
        let _ = stdout.flush();
    }

    /// Reports a failure: always on stderr, and as a JSON line with `--json`.
    pub(crate) fn error(&self, code: u8, error: &anyhow::Error) {
        eprintln!("error: {error:#}");
        if self.json {
            let mut stdout = std::io::stdout().lock();
            let _ = writeln!(
                stdout,
                "{}",
                json!({"event": "error", "exit_code": code, "message": format!("{error:#}")})
            );
        }
    }
}
