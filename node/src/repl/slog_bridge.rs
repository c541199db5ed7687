//! raft-rs logs through `slog`; Keel logs through `tracing`. This drain
//! forwards raft-rs's records to `tracing` events (target `raft`), with their
//! key-value pairs appended to the message, and formats nothing when no
//! subscriber wants the level.

use std::fmt::Write as _;

use slog::{Drain, KV as _};

/// A root logger for node `node_id`'s groups.
pub(super) fn logger(node_id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("node" => node_id))
}

#[derive(Debug, Clone, Copy)]
struct TracingDrain;

struct Pairs(String);

impl slog::Serializer for Pairs {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        // Writing to a String cannot fail.
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        macro_rules! forward {
            ($level:expr) => {
                if tracing::enabled!(target: "raft", $level) {
                    let mut pairs = Pairs(String::new());
                    let _ = record.kv().serialize(record, &mut pairs);
                    let _ = values.serialize(record, &mut pairs);
                    tracing::event!(target: "raft", $level, "{}{}", record.msg(), pairs.0);
                }
            };
        }
        // tracing's macros need the level as a constant: one arm per level.
        match record.level() {
            slog::Level::Critical | slog::Level::Error => forward!(tracing::Level::ERROR),
            slog::Level::Warning => forward!(tracing::Level::WARN),
            slog::Level::Info => forward!(tracing::Level::INFO),
            slog::Level::Debug => forward!(tracing::Level::DEBUG),
            slog::Level::Trace => forward!(tracing::Level::TRACE),
        }
        Ok(())
    }
}
