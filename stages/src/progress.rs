//! How a stage reports progress without knowing who watches (a progress bar, a log, nothing).

/// A progress sink. Implementations must be cheap to call once per training step.
pub trait Progress: Send + Sync {
    /// A new phase of `total` steps (`0` = unknown length).
    fn begin(&self, label: &str, total: u64);
    /// Position within the phase and a short status (loss, accuracy, throughput…).
    fn update(&self, position: u64, status: &str);
    /// A line worth keeping in the log (evaluations, resumes).
    fn note(&self, line: &str);
    /// Something the user must hear about (a fallback taken, a value left out).
    fn warn(&self, line: &str) {
        self.note(&format!("warning: {line}"));
    }
    fn end(&self);
}

/// Discards everything (tests, `--quiet`).
pub struct Silent;

impl Progress for Silent {
    fn begin(&self, _: &str, _: u64) {}
    fn update(&self, _: u64, _: &str) {}
    fn note(&self, _: &str) {}
    fn end(&self) {}
}
