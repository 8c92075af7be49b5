//! SIGINT and SIGTERM (Ctrl-C, `kill`, Slurm's time limit): while training, the step in flight
//! finishes, a checkpoint is written and the run stops with "run the same command to resume";
//! at any other time, and on a second signal, the process exits at once — every other stage
//! leaves nothing half-written (staging directories, temporary files renamed into place).

use opt_stages::training::interrupt::Interrupt;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The conventional exit status of a process stopped by `signal` (130 for SIGINT, 143 for
/// SIGTERM).
pub fn exit_status(signal: i32) -> u8 {
    (128 + signal).clamp(0, 255) as u8
}

pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        _ => "signal",
    }
}

/// Routes SIGINT and SIGTERM to `interrupt` from a watcher thread.
pub fn install(interrupt: &Interrupt) -> anyhow::Result<()> {
    let mut signals = Signals::new([SIGINT, SIGTERM])?;
    let interrupt = interrupt.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if interrupt.is_honoured() && interrupt.requested().is_none() {
                    eprintln!(
                        "\n{} received: checkpointing at the end of this training step (send it \
                         again to quit at once)",
                        name(signal)
                    );
                    interrupt.raise(signal);
                } else {
                    eprintln!(
                        "\n{} received: stopped; run the same command to resume",
                        name(signal)
                    );
                    std::process::exit(exit_status(signal).into());
                }
            }
        })?;
    Ok(())
}
