//! The routing map: what MemDS holds in full and the control plane
//! publishes change by change.
//!
//! [`State`] is the map's content (tables, partitions, storage nodes).
//! [`RoutingMap`] is a state with its epoch and version, changed only by
//! applying the control plane's changes in version order (a gap is an error:
//! the follower asks again from its version, or from scratch). [`diff`]
//! turns an observed new state into the changes that take the old one there,
//! nodes first and drops last, so that a follower between two changes never
//! holds a partition whose nodes it does not know.

use std::collections::BTreeMap;

use keel_wire::routing::{
    Change, ChangeKind, LocatedReplica, Location, LookupKey, LookupStatus, NodeRoute, PartitionRoute, TableRoute,
};

/// The map's content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Tables by name.
    pub tables: BTreeMap<String, TableRoute>,
    /// Partitions by id.
    pub partitions: BTreeMap<u64, PartitionRoute>,
    /// Storage nodes by id.
    pub nodes: BTreeMap<u64, NodeRoute>,
}

/// A change that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// Changes must come in version order.
    #[error("change {got} does not follow version {have}")]
    Gap {
        /// The map's version.
        have: u64,
        /// The change's.
        got: u64,
    },
}

/// A state at a version of one control-plane epoch.
#[derive(Debug, Clone, Default)]
pub struct RoutingMap {
    epoch: u64,
    version: u64,
    state: State,
    /// The change that last set each partition.
    partition_versions: BTreeMap<u64, u64>,
}

impl RoutingMap {
    /// An empty map of no epoch (version 0).
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// The epoch whose changes it applies (0: none yet).
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The last change applied.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The content.
    #[must_use]
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Drops everything and starts over in `epoch`.
    pub fn reset(&mut self, epoch: u64) {
        *self = Self { epoch, ..Self::default() };
    }

    /// Drops everything and starts over in `epoch`, with the next change
    /// expected after `version` (a reset's snapshot continues the
    /// control plane's numbering).
    pub fn reset_at(&mut self, epoch: u64, version: u64) {
        *self = Self { epoch, version, ..Self::default() };
    }

    /// Applies the next change.
    pub fn apply(&mut self, change: &Change) -> Result<(), MapError> {
        if change.version != self.version + 1 {
            return Err(MapError::Gap { have: self.version, got: change.version });
        }
        let state = &mut self.state;
        match &change.kind {
            ChangeKind::Table(t) => {
                state.tables.insert(t.name.clone(), t.clone());
            }
            ChangeKind::TableDropped(name) => {
                state.tables.remove(name);
            }
            ChangeKind::Partition(p) => {
                state.partitions.insert(p.partition, p.clone());
                self.partition_versions.insert(p.partition, change.version);
            }
            ChangeKind::PartitionDropped(p) => {
                state.partitions.remove(p);
                self.partition_versions.remove(p);
            }
            ChangeKind::Node(n) => {
                state.nodes.insert(n.id, n.clone());
            }
        }
        self.version = change.version;
        Ok(())
    }

    /// Locates one key.
    #[must_use]
    pub fn lookup(&self, key: &LookupKey) -> Location {
        let mut location = Location {
            status: LookupStatus::NoSuchTable,
            table: None,
            partition: 0,
            leader: 0,
            term: 0,
            version: 0,
            replicas: Vec::new(),
        };
        let Some(table) = self.state.tables.get(&key.table) else { return location };
        location.table = Some(table.clone());
        if key.table_only {
            location.status = LookupStatus::Found;
            return location;
        }
        location.status = LookupStatus::NoRoute;
        let partition = table.partition_of(key.hash);
        location.partition = partition;
        let Some(route) = self.state.partitions.get(&partition) else { return location };
        location.status = LookupStatus::Found;
        location.leader = route.leader;
        location.term = route.term;
        location.version = self.partition_versions.get(&partition).copied().unwrap_or(0);
        location.replicas = route
            .replicas
            .iter()
            .filter_map(|r| {
                let node = self.state.nodes.get(&r.node)?;
                let index = usize::try_from(r.shard).ok()?;
                Some(LocatedReplica {
                    node: r.node,
                    endpoint: node.shard_endpoints.get(index).cloned().unwrap_or_else(|| node.endpoint.clone()),
                    node_endpoint: node.endpoint.clone(),
                    az: node.az.clone(),
                    log_only: r.log_only,
                    healthy: node.healthy,
                })
            })
            .collect();
        location
    }
}

/// The changes (unnumbered) that take `old` to `new`: nodes, tables and
/// partitions set first, then partitions and tables dropped. Nodes are
/// never dropped (a member that leaves stays, unhealthy).
#[must_use]
pub fn diff(old: &State, new: &State) -> Vec<ChangeKind> {
    let mut changes = Vec::new();
    for (id, node) in &new.nodes {
        if old.nodes.get(id) != Some(node) {
            changes.push(ChangeKind::Node(node.clone()));
        }
    }
    for (name, table) in &new.tables {
        if old.tables.get(name) != Some(table) {
            changes.push(ChangeKind::Table(table.clone()));
        }
    }
    for (id, partition) in &new.partitions {
        if old.partitions.get(id) != Some(partition) {
            changes.push(ChangeKind::Partition(partition.clone()));
        }
    }
    changes.extend(
        old.partitions.keys().filter(|id| !new.partitions.contains_key(id)).map(|&id| ChangeKind::PartitionDropped(id)),
    );
    changes.extend(
        old.tables.keys().filter(|n| !new.tables.contains_key(*n)).map(|n| ChangeKind::TableDropped(n.clone())),
    );
    changes
}

#[cfg(test)]
mod tests {
    use keel_wire::routing::ReplicaRoute;

    use super::*;

    fn node(id: u64, healthy: bool) -> NodeRoute {
        NodeRoute {
            id,
            name: format!("n{id}"),
            az: format!("az{id}"),
            endpoint: format!("127.0.0.1:74{id}0"),
            shard_endpoints: vec![format!("127.0.0.1:74{id}1"), format!("127.0.0.1:74{id}2")],
            healthy,
        }
    }

    fn state(tables: &[(&str, u32, u32)], leader: u64, healthy: bool) -> State {
        let mut s = State::default();
        for id in 1..=3 {
            s.nodes.insert(id, node(id, healthy || id != 3));
        }
        for &(name, id, partitions) in tables {
            let t = TableRoute { name: name.into(), id, partitions, partition_key: "pk".into(), sort_key: None };
            for i in 0..partitions {
                let partition = (u64::from(id) << 32) | u64::from(i);
                let replicas = (1..=3).map(|n| ReplicaRoute { node: n, shard: i % 2, log_only: false }).collect();
                s.partitions.insert(partition, PartitionRoute { partition, leader, term: leader + 1, replicas });
            }
            s.tables.insert(t.name.clone(), t);
        }
        s
    }

    /// Numbers `kinds` after `map`'s version and applies them.
    fn publish(map: &mut RoutingMap, kinds: Vec<ChangeKind>) {
        for kind in kinds {
            let change = Change { version: map.version() + 1, kind };
            map.apply(&change).expect("in order");
        }
    }

    #[test]
    fn applying_the_diffs_of_a_sequence_of_states_reproduces_each_state() {
        let states = [
            State::default(),
            state(&[("music", 1, 4)], 1, true),
            state(&[("music", 1, 4), ("books", 2, 2)], 2, false),
            state(&[("books", 2, 2)], 3, true),
            // (Members stay: a node is never dropped from the map.)
            state(&[], 1, true),
        ];
        let mut map = RoutingMap::new();
        map.reset(7);
        for pair in states.windows(2) {
            let [old, new] = pair else { continue };
            publish(&mut map, diff(old, new));
            assert_eq!(map.state(), new);
            assert!(diff(new, new).is_empty(), "a state differs from nothing in itself");
        }
        assert_eq!(map.epoch(), 7);
    }

    #[test]
    fn a_change_out_of_order_is_refused_and_changes_nothing() {
        let mut map = RoutingMap::new();
        let change = Change { version: 2, kind: ChangeKind::Node(node(1, true)) };
        assert_eq!(map.apply(&change), Err(MapError::Gap { have: 0, got: 2 }));
        assert!(map.state().nodes.is_empty());
    }

    #[test]
    fn a_lookup_names_the_partition_its_replicas_on_their_shards_and_the_leader() {
        let mut map = RoutingMap::new();
        publish(&mut map, diff(&State::default(), &state(&[("music", 1, 4)], 2, false)));
        let key = LookupKey { table: "music".into(), hash: u64::MAX, table_only: false };
        let found = map.lookup(&key);
        assert_eq!(found.status, LookupStatus::Found);
        assert_eq!((found.partition, found.leader, found.term), ((1 << 32) | 3, 2, 3));
        let endpoints: Vec<_> = found.replicas.iter().map(|r| (r.endpoint.as_str(), r.healthy)).collect();
        // Partition 3 is on shard 1 of each node; node 3 is down.
        assert_eq!(endpoints, vec![("127.0.0.1:7412", true), ("127.0.0.1:7422", true), ("127.0.0.1:7432", false)]);
        assert!(found.version > 0);
        let table = map.lookup(&LookupKey { table_only: true, ..key.clone() });
        assert_eq!((table.status, table.table.map(|t| t.partitions)), (LookupStatus::Found, Some(4)));
        assert_eq!(map.lookup(&LookupKey { table: "nope".into(), ..key }).status, LookupStatus::NoSuchTable);
    }

    #[test]
    fn a_partition_version_moves_only_when_its_entry_changes() {
        let mut map = RoutingMap::new();
        let first = state(&[("music", 1, 2)], 1, true);
        publish(&mut map, diff(&State::default(), &first));
        let key = |hash| LookupKey { table: "music".into(), hash, table_only: false };
        let before = (map.lookup(&key(0)).version, map.lookup(&key(u64::MAX)).version);
        let mut moved = first.clone();
        if let Some(p) = moved.partitions.get_mut(&(1 << 32)) {
            p.leader = 3;
            p.term = 9;
        }
        publish(&mut map, diff(&first, &moved));
        let after = (map.lookup(&key(0)).version, map.lookup(&key(u64::MAX)).version);
        assert!(after.0 > before.0, "the moved leader's partition has a new version");
        assert_eq!(after.1, before.1, "the other partition kept its version");
        assert_eq!(map.lookup(&key(0)).leader, 3);
    }
}
