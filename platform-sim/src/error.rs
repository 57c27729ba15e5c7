//! The simulator's typed error. Messages say what to fix and never carry
//! a password.

use std::{io, net::SocketAddr};

/// Everything that can go wrong when starting, steering or stopping a
/// simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration has problems (all of them are listed).
    #[error("invalid simulator configuration: {0}")]
    Config(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        source: io::Error,
    },
    /// Other IO trouble, e.g. starting the simulator's thread.
    #[error("simulator IO error: {0}")]
    Io(#[from] io::Error),
    /// A command or raw frame was asked for while no connector session has
    /// passed the credentials check.
    #[error("no authenticated connector session is open")]
    NoSession,
    /// No `response:` with this task id arrived in time.
    #[error("no response to task {task_id} within the time-out")]
    Timeout {
        /// The task id of the command that went unanswered.
        task_id: String,
    },
    /// No `response:` with this task id arrived in time, and no device of
    /// the command's id is registered: the likely reason, since a connector
    /// drops commands for devices it does not have.
    #[error(
        "no response to task {task_id} within the time-out: no device {device_id:?} is registered \
         (`platform-sim devices` lists the registered ones)"
    )]
    NotRegistered {
        /// The task id of the command that went unanswered.
        task_id: String,
        /// The device id the command was for.
        device_id: String,
    },
    /// The simulator was stopped (or its runtime went away).
    #[error("the simulator is stopped")]
    Stopped,
}
