//! A request to stop (SIGINT, SIGTERM) that long stages honour at a safe point.
//!
//! Stages know nothing of signals: whoever installs the handlers (the pipeline) raises the
//! request here, and the training loop checkpoints at the end of its current step and returns
//! [`crate::training::train::Suspension::Interrupted`]. While a stage can honour it, it says so
//! ([`Interrupt::honoured_while`]); at other times the handler may simply exit, since every
//! other stage leaves nothing half-written anyway.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone, Default)]
pub struct Interrupt {
    inner: Arc<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The signal number asked for, 0 while none.
    signal: AtomicI32,
    /// Whether a stage is running that checks [`Interrupt::requested`].
    honoured: AtomicBool,
}

impl Interrupt {
    /// Asks the running stage to stop, recording which signal asked.
    pub fn raise(&self, signal: i32) {
        self.inner.signal.store(signal, Ordering::SeqCst);
    }

    /// The signal that asked to stop, if one has.
    pub fn requested(&self) -> Option<i32> {
        match self.inner.signal.load(Ordering::SeqCst) {
            0 => None,
            s => Some(s),
        }
    }

    /// Whether a stage is currently able to stop gracefully.
    pub fn is_honoured(&self) -> bool {
        self.inner.honoured.load(Ordering::SeqCst)
    }

    /// Marks the interrupt as honoured until the guard drops.
    pub fn honoured_while(&self) -> HonouredGuard {
        self.inner.honoured.store(true, Ordering::SeqCst);
        HonouredGuard(self.inner.clone())
    }
}

pub struct HonouredGuard(Arc<State>);

impl Drop for HonouredGuard {
    fn drop(&mut self) {
        self.0.honoured.store(false, Ordering::SeqCst);
    }
}
