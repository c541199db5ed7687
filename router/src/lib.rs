//! Keel's front end: the control plane, MemDS and request routers.
//!
//! ```text
//!  client ──binary protocol──▶ router (front) ──the same bytes, router's id──▶ shard port of a storage node
//!                                 │  ▲ one lookup per keyed request, batched, hit or miss
//!                                 ▼  │
//!                              MemDS (memds) ◀──numbered changes (long poll)── control plane (control)
//!                                                                                 │ polls cluster status
//!                                                                                 ▼ and the catalog
//!                                                                            storage nodes
//! ```
//!
//! - [`map`]: the routing map every MemDS server holds in full — tables,
//!   partitions (replicas, leader, term, version) and storage nodes — kept
//!   current by applying the control plane's numbered changes, answering
//!   lookups `(table, key hash) → partition, replicas, leader, version`; and
//!   [`map::diff`], which turns a newly observed state into those changes.
//! - [`control`]: the control plane (observes the nodes, publishes the
//!   change stream). [`memds`]: a MemDS server. [`front`]: the router.
//! - [`net`]: frames over TCP, pipelined connections, the accept loop.
//!
//! Wire format of the changes and lookups: `keel_wire::routing`
//! (`docs/format/routing.md`). Only `keel-wire` knows FlatBuffers.

pub mod control;
pub mod daemon;
pub mod front;
pub mod map;
pub mod memds;
pub mod net;
