//! [`NetError`]: every failure of network slots, naming the prefix, the slot and the step it
//! happened in. Owns only the error type; what fails is the other modules' business.

use crate::cmd::CmdError;

/// A network slot failure, with the slot and step it happened in.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configuration cannot work (bad prefix, slot range outside the address plan).
    #[error("invalid network slot configuration: {0}")]
    Config(String),
    /// Every slot index of the configured range is taken.
    #[error("no free network slot: all {max_slots} slots of prefix {prefix} are in use")]
    Exhausted {
        /// The pool's prefix.
        prefix: String,
        /// Size of the pool's slot range.
        max_slots: u32,
    },
    /// A command creating, resetting or removing one slot failed.
    #[error("network slot {index} of prefix {prefix}: {step}: {source}")]
    Slot {
        /// The pool's prefix.
        prefix: String,
        /// The slot's index.
        index: u32,
        /// What was being done.
        step: &'static str,
        /// The failed command, with its stderr.
        #[source]
        source: CmdError,
    },
    /// A command setting up or removing the prefix's host-wide rules failed.
    #[error("host network rules of prefix {prefix}: {step}: {source}")]
    Host {
        /// The pool's prefix.
        prefix: String,
        /// What was being done.
        step: &'static str,
        /// The failed command, with its stderr.
        #[source]
        source: CmdError,
    },
    /// A kernel file (a sysctl or a namespace file) could not be used.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The slot index is not one this pool can hand out or take back.
    #[error("network slot {index} of prefix {prefix}: {reason}")]
    Unknown {
        /// The pool's prefix.
        prefix: String,
        /// The slot's index.
        index: u32,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The pool has been shut down.
    #[error("the network slot pool of prefix {0} is shut down")]
    ShutDown(String),
    /// A blocking task running a slot operation did not complete.
    #[error("network slot task failed: {0}")]
    Task(String),
}
