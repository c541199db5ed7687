//! Keel's binary protocol. Only this crate knows FlatBuffers; `node` and the
//! router convert at the edge.
//!
//! - [`fb`]: code generated from `wire/schema/keel.fbs` (regenerate with
//!   `scripts/gen-flatbuffers.sh`; CI checks it is current).
//! - [`frame`]: the sans-IO frame codec, `[u32 length][u32 crc32c][body]`.
//! - [`raft`]: the envelope of replication traffic between nodes
//!   (`wire/schema/raft.fbs`).
//! - [`routing`]: routing metadata between the control plane, MemDS servers
//!   and routers (`wire/schema/routing.fbs`).
//! - [`verify`]: verification of every incoming buffer with explicit limits,
//!   including the standalone `Item` buffers carried in `ItemBytes`.

pub mod expr;
pub mod frame;
pub mod item;
pub mod key;
pub mod number;
pub mod protocol;
pub mod raft;
pub mod routing;
pub mod verify;

#[cfg(feature = "client")]
pub mod client;

#[allow(
    unsafe_code,
    unused_imports,
    dead_code,
    missing_debug_implementations,
    non_camel_case_types,
    non_snake_case,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_lossless
)]
#[rustfmt::skip]
#[path = "generated/keel_generated.rs"]
mod generated;

#[allow(
    unsafe_code,
    unused_imports,
    dead_code,
    missing_debug_implementations,
    non_camel_case_types,
    non_snake_case,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_lossless
)]
#[rustfmt::skip]
#[path = "generated/raft_generated.rs"]
mod generated_raft;

#[allow(
    unsafe_code,
    unused_imports,
    dead_code,
    missing_debug_implementations,
    non_camel_case_types,
    non_snake_case,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap,
    clippy::cast_lossless
)]
#[rustfmt::skip]
#[path = "generated/routing_generated.rs"]
mod generated_routing;

/// The generated FlatBuffers types (`keel.wire` namespace).
pub use generated::keel::wire as fb;
