//! Keel's front end (issue 6; being built): the control plane, MemDS and
//! request routers.
//!
//! - [`map`]: the routing map every MemDS server holds in full — tables,
//!   partitions (replicas, leader, term, version) and storage nodes — kept
//!   current by applying the control plane's numbered changes, answering
//!   lookups `(table, key hash) → partition, replicas, leader, version`; and
//!   [`map::diff`], which turns a newly observed state into those changes.
//!
//! Wire format of the changes and lookups: `keel_wire::routing`
//! (`docs/format/routing.md`).

pub mod map;
