//! Cluster membership as an operator states it, and where each partition's
//! replicas go.
//!
//! `--initial-cluster n1=127.0.0.1:7410/az1,n2=127.0.0.1:7420/az2,n3=127.0.0.1:7430/az3`
//! names every node, its replication address and its availability zone.
//! Every node is started with the same list, so every node derives the same
//! Raft peer ids (1, 2, … in the order of the names) and the same placement
//! without talking to the others: a partition has one replica in each of
//! [`REPLICAS_PER_PARTITION`] zones, and within a zone the replicas of
//! successive partitions take turns over its nodes. (A table the control
//! plane placed keeps its own lists instead: `TableDef::placement`.)

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

pub use keel_wire::protocol::REPLICAS_PER_PARTITION;
/// Most nodes in an initial cluster.
pub const MEMBERS_MAX: usize = 256;

/// One node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Raft peer id (1-based, in the order of the names).
    pub id: u64,
    /// The operator's name for it (`n1`).
    pub name: String,
    /// Where its peers reach it.
    pub addr: SocketAddr,
    /// Its availability zone.
    pub az: String,
}

/// An `--initial-cluster` value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterSpecError {
    /// An entry is not `name=host:port/az`.
    #[error("initial cluster entry {entry:?} is not name=host:port/az")]
    Malformed {
        /// The entry.
        entry: String,
    },
    /// An address does not parse.
    #[error("initial cluster entry {entry:?}: {address:?} is not an IP address and port")]
    Address {
        /// The entry.
        entry: String,
        /// The address part.
        address: String,
    },
    /// A name or an address appears twice.
    #[error("initial cluster names {0:?} twice")]
    Duplicate(String),
    /// Fewer zones than replicas per partition (or no node at all).
    #[error("initial cluster spans {zones} availability zone(s); every partition needs {needed}")]
    TooFewZones {
        /// Zones named.
        zones: usize,
        /// Zones needed.
        needed: usize,
    },
    /// Above [`MEMBERS_MAX`].
    #[error("initial cluster names {0} nodes; at most {MEMBERS_MAX}")]
    TooMany(usize),
    /// `--node-id` is not in the list.
    #[error("node {0:?} is not in the initial cluster")]
    UnknownNode(String),
}

/// The members of a cluster, as every node derives them from the same list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    members: Vec<Member>,
    /// Zone → member ids, both sorted.
    zones: BTreeMap<String, Vec<u64>>,
}

impl Cluster {
    /// Parses `name=host:port/az,…`.
    pub fn parse(spec: &str) -> Result<Self, ClusterSpecError> {
        let mut entries = Vec::new();
        for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let malformed = || ClusterSpecError::Malformed { entry: entry.to_owned() };
            let (name, rest) = entry.split_once('=').ok_or_else(malformed)?;
            let (address, az) = rest.rsplit_once('/').ok_or_else(malformed)?;
            if name.is_empty() || az.is_empty() {
                return Err(malformed());
            }
            let addr = address
                .parse::<SocketAddr>()
                .map_err(|_| ClusterSpecError::Address { entry: entry.to_owned(), address: address.to_owned() })?;
            entries.push((name.to_owned(), addr, az.to_owned()));
        }
        if entries.len() > MEMBERS_MAX {
            return Err(ClusterSpecError::TooMany(entries.len()));
        }
        entries.sort();
        let mut names = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        for (name, addr, _) in &entries {
            if !names.insert(name.clone()) {
                return Err(ClusterSpecError::Duplicate(name.clone()));
            }
            if !addrs.insert(*addr) {
                return Err(ClusterSpecError::Duplicate(addr.to_string()));
            }
        }
        let members: Vec<Member> =
            entries.into_iter().zip(1..).map(|((name, addr, az), id)| Member { id, name, addr, az }).collect();
        let mut zones: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for m in &members {
            zones.entry(m.az.clone()).or_default().push(m.id);
        }
        if zones.len() < REPLICAS_PER_PARTITION {
            return Err(ClusterSpecError::TooFewZones { zones: zones.len(), needed: REPLICAS_PER_PARTITION });
        }
        Ok(Self { members, zones })
    }

    /// The member an operator calls `name` (`--node-id`).
    pub fn member(&self, name: &str) -> Result<&Member, ClusterSpecError> {
        self.members.iter().find(|m| m.name == name).ok_or_else(|| ClusterSpecError::UnknownNode(name.to_owned()))
    }

    /// All members, in id order.
    #[must_use]
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// The nodes holding `partition`'s replicas: one in each of
    /// [`REPLICAS_PER_PARTITION`] zones. Which zones, and which node of
    /// each, rotate with the partition number, so that replicas (and
    /// leaders, which start anywhere) spread over every node.
    #[must_use]
    pub fn replicas(&self, partition: u64) -> Vec<u64> {
        let zones: Vec<&Vec<u64>> = self.zones.values().collect();
        let count = zones.len() as u64;
        (0..REPLICAS_PER_PARTITION as u64)
            .filter_map(|k| {
                let zone = zones.get(usize::try_from((partition + k) % count).ok()?)?;
                let turn = partition / count;
                zone.get(usize::try_from(turn % zone.len() as u64).ok()?).copied()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "n2=127.0.0.1:7420/az2,n1=127.0.0.1:7410/az1,n3=127.0.0.1:7430/az3";

    #[test]
    fn ids_follow_the_names_whatever_the_order_given() {
        let cluster = Cluster::parse(SPEC).expect("valid");
        let names: Vec<(u64, &str, &str)> =
            cluster.members().iter().map(|m| (m.id, m.name.as_str(), m.az.as_str())).collect();
        assert_eq!(names, vec![(1, "n1", "az1"), (2, "n2", "az2"), (3, "n3", "az3")]);
        assert_eq!(cluster.member("n2").map(|m| m.addr.port()), Ok(7420));
        assert_eq!(cluster.member("n9"), Err(ClusterSpecError::UnknownNode("n9".to_owned())));
    }

    #[test]
    fn every_partition_has_one_replica_per_zone_and_replicas_spread() {
        let spec = "a=127.0.0.1:1/z1,b=127.0.0.1:2/z1,c=127.0.0.1:3/z2,d=127.0.0.1:4/z2,e=127.0.0.1:5/z3,f=127.0.0.1:6/z3,g=127.0.0.1:7/z4";
        let cluster = Cluster::parse(spec).expect("valid");
        let zone_of = |id: u64| cluster.members().iter().find(|m| m.id == id).map(|m| m.az.clone());
        let mut load: BTreeMap<u64, usize> = BTreeMap::new();
        for partition in 0..240 {
            let replicas = cluster.replicas(partition);
            assert_eq!(replicas.len(), REPLICAS_PER_PARTITION);
            let zones: BTreeSet<_> = replicas.iter().map(|&id| zone_of(id)).collect();
            assert_eq!(zones.len(), REPLICAS_PER_PARTITION, "partition {partition}: {replicas:?}");
            for id in replicas {
                *load.entry(id).or_default() += 1;
            }
        }
        assert_eq!(load.len(), 7, "every node holds replicas: {load:?}");
        // Zone z4 has one node, the others two: its node holds twice as many.
        let (min, max) = (load.values().min().copied(), load.values().max().copied());
        assert_eq!((min, max), (Some(90), Some(180)), "{load:?}");
    }

    #[test]
    fn bad_specs_are_refused_with_the_reason() {
        let refused = |spec: &str| Cluster::parse(spec).err();
        assert!(matches!(refused("n1=127.0.0.1:1"), Some(ClusterSpecError::Malformed { .. })));
        assert!(matches!(refused("n1=localhost:1/az1"), Some(ClusterSpecError::Address { .. })));
        assert_eq!(
            refused("n1=127.0.0.1:1/a,n1=127.0.0.1:2/b,n3=127.0.0.1:3/c"),
            Some(ClusterSpecError::Duplicate("n1".to_owned()))
        );
        assert_eq!(
            refused("n1=127.0.0.1:1/a,n2=127.0.0.1:1/b,n3=127.0.0.1:3/c"),
            Some(ClusterSpecError::Duplicate("127.0.0.1:1".to_owned()))
        );
        assert_eq!(
            refused("n1=127.0.0.1:1/a,n2=127.0.0.1:2/a,n3=127.0.0.1:3/b"),
            Some(ClusterSpecError::TooFewZones { zones: 2, needed: 3 })
        );
        assert_eq!(refused(""), Some(ClusterSpecError::TooFewZones { zones: 0, needed: 3 }));
    }
}
