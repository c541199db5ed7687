//! Keel's storage node. This crate holds one shard's storage engine: the I/O
//! layer ([`io`]), the shard write-ahead log ([`wal`]), the copy-on-write
//! B-tree ([`btree`]) and partition replicas that tie them together
//! ([`replica`]). See `ARCHITECTURE.md` at the repository root.

pub mod btree;
pub mod engine;
pub mod handler;
pub mod io;
pub mod notify;
pub mod repl;
pub mod replica;
pub mod sched;
pub mod server;
pub mod testing;
pub mod wal;
