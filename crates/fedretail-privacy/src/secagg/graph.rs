//! The neighbour graph of SecAgg+: a Harary graph (each store joined to the `k/2`
//! nearest on either side of a ring) over a random permutation of the stores, the
//! construction Bell et al. analyse. The permutation is drawn from the session id, so
//! the coordinator and every store derive the same graph without sending it.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::SecAggConfig;

#[derive(Debug, Clone)]
pub struct NeighbourGraph {
    /// Sorted neighbour lists, one per store.
    adjacency: Vec<Vec<u32>>,
}

impl NeighbourGraph {
    pub fn new(config: &SecAggConfig) -> Self {
        let n = config.num_stores as usize;
        let k = config.neighbours as usize;
        if k + 1 >= n {
            let adjacency = (0..n as u32)
                .map(|u| (0..n as u32).filter(|&v| v != u).collect())
                .collect();
            return NeighbourGraph { adjacency };
        }
        let mut ring: Vec<u32> = (0..n as u32).collect();
        let mut rng = ChaCha20Rng::seed_from_u64(config.session ^ 0x005e_ca66_91a9);
        ring.shuffle(&mut rng);
        let mut adjacency = vec![Vec::with_capacity(k); n];
        for (pos, &u) in ring.iter().enumerate() {
            for d in 1..=k / 2 {
                adjacency[u as usize].push(ring[(pos + d) % n]);
                adjacency[u as usize].push(ring[(pos + n - d) % n]);
            }
        }
        for list in &mut adjacency {
            list.sort_unstable();
        }
        NeighbourGraph { adjacency }
    }

    pub fn neighbours(&self, store: u32) -> &[u32] {
        self.adjacency
            .get(store as usize)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    pub fn are_neighbours(&self, u: u32, v: u32) -> bool {
        self.neighbours(u).binary_search(&v).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_graph_is_regular_symmetric_and_seeded() {
        let config = SecAggConfig::for_network(200, 10, 42).unwrap();
        let k = config.neighbours as usize;
        assert!(k < 199 && k.is_multiple_of(2));
        let graph = NeighbourGraph::new(&config);
        for u in 0..200u32 {
            let list = graph.neighbours(u);
            assert_eq!(list.len(), k, "store {u}");
            assert!(!list.contains(&u));
            for &v in list {
                assert!(graph.are_neighbours(v, u));
            }
        }
        let again = NeighbourGraph::new(&config);
        assert_eq!(graph.adjacency, again.adjacency);
        let other = NeighbourGraph::new(&SecAggConfig {
            session: 43,
            ..config
        });
        assert_ne!(graph.adjacency, other.adjacency);
    }

    #[test]
    fn small_networks_use_the_complete_graph() {
        let config = SecAggConfig::for_network(10, 10, 1).unwrap();
        assert_eq!(config.neighbours, 9);
        assert_eq!(config.threshold, 5);
        let graph = NeighbourGraph::new(&config);
        assert_eq!(graph.neighbours(3).len(), 9);
    }
}
