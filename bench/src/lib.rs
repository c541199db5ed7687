//! `keel-bench`: YCSB's core workloads against Keel and peers, measured the
//! same way in the same run. See docs/bench/README.md.

pub mod disk;
pub mod driver;
pub mod host;
pub mod pacer;
pub mod report;
pub mod runner;
pub mod servers;
pub mod workload;
