use super::*;
use crate::aggregate::StreamingWeightedSum;
use crate::newton::pack_upper;
use crate::update::UpdateVector;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A store of least-squares rows: `loss = 1/2 sum (x.w - y)^2`.
struct Store {
    x: Vec<Vec<f64>>,
    y: Vec<f64>,
}

impl Store {
    fn new(truth: &[f64], rows: usize, rng: &mut ChaCha8Rng) -> Store {
        let mut x = Vec::new();
        let mut y = Vec::new();
        for _ in 0..rows {
            let mut r: Vec<f64> = (0..truth.len() - 1)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            r.push(1.0);
            y.push(
                r.iter().zip(truth).map(|(a, b)| a * b).sum::<f64>() + rng.random_range(-0.1..0.1),
            );
            x.push(r);
        }
        Store { x, y }
    }

    fn loss(&self, w: &[f64]) -> f64 {
        self.x
            .iter()
            .zip(&self.y)
            .map(|(r, y)| {
                let e = r.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() - y;
                0.5 * e * e
            })
            .sum()
    }

    /// `[gradient, packed Hessian]` at `w`.
    fn stats(&self, w: &[f64]) -> Vec<f64> {
        let d = w.len();
        let (mut g, mut h) = (vec![0.0; d], vec![0.0; d * d]);
        for (r, y) in self.x.iter().zip(&self.y) {
            let e = r.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() - y;
            for i in 0..d {
                g[i] += e * r[i];
                for j in 0..d {
                    h[i * d + j] += r[i] * r[j];
                }
            }
        }
        pack_upper(&h, d, &mut g);
        g
    }

    /// The store's update in a clustered round, and the leaf it joined.
    fn clustered_update(&self, global: &[f64], d: usize, groups: usize) -> (Vec<f64>, usize) {
        let tree = ClusterTree::new(global, d, groups).unwrap();
        let leaf = *tree.path(|w| self.loss(w)).last().unwrap();
        let mut out = vec![0.0; clustered_statistics_len(d, groups)];
        let mask = base_layout(d).regularization_mask();
        write_leaf_statistics(
            &mut out,
            leaf,
            self.y.len() as u64,
            &self.stats(tree.model(leaf)),
            &mask,
        );
        (out, leaf)
    }
}

fn base_layout(d: usize) -> ModelLayout {
    ModelLayout::new(vec![
        Segment::new("weights", d - 1, true),
        Segment::new("intercept", 1, false),
    ])
    .unwrap()
}

fn all_stores() -> Vec<StoreId> {
    (0..12).map(|i| format!("s{i}")).collect()
}

fn round(
    s: &mut dyn Strategy,
    round: u64,
    global: &ModelParameters,
    updates: Vec<Vec<f64>>,
) -> ModelParameters {
    let mut sum = StreamingWeightedSum::new(updates[0].len());
    for u in updates {
        sum.push(UpdateVector::F64(u), s.update_weight(1)).unwrap();
    }
    s.apply(round, global, &sum.finish()).unwrap().parameters
}

#[test]
fn with_one_group_it_is_fed_newton_step_for_step() {
    let d = 4;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let stores: Vec<Store> = (0..5)
        .map(|i| Store::new(&[1.0, -2.0, 0.5, i as f64], 30, &mut rng))
        .collect();
    let base = ModelParameters::zeros(base_layout(d));
    let mut plain = FedNewton::try_new(FedNewtonConfig::default()).unwrap();
    let mut clustered = ClusteredNewton::try_new(ClusteredNewtonConfig {
        max_groups: 1,
        ..Default::default()
    })
    .unwrap();
    let (mut w, mut tree) = (base.clone(), clustered_initial(&base, 1).unwrap());
    for r in 1..=6 {
        let plain_updates = stores.iter().map(|s| s.stats(w.values())).collect();
        let tree_updates = stores
            .iter()
            .map(|s| s.clustered_update(tree.values(), d, 1).0)
            .collect();
        w = round(&mut plain, r, &w, plain_updates);
        tree = round(&mut clustered, r, &tree, tree_updates);
        assert_eq!(&tree.values()[..d], w.values(), "round {r}");
    }
    assert!(
        clustered.is_finished(&tree),
        "one group: nothing to split after a level"
    );
    assert_eq!(clustered.round_limit(), Some(6));
}

#[test]
fn two_groups_are_found_and_each_leaf_is_its_stores_centralized_fit() {
    let d = 4;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let truths = [[1.0, -2.0, 0.5, 0.3], [-1.5, 1.0, 2.0, -0.4]];
    let group: Vec<usize> = (0..12).map(|i| (i * 7 % 5) % 2).collect();
    let stores: Vec<Store> = group
        .iter()
        .map(|&g| Store::new(&truths[g], 20 + 10 * g, &mut rng))
        .collect();
    let mut s = ClusteredNewton::try_new(ClusteredNewtonConfig {
        max_groups: 2,
        rounds_per_level: 4,
        ..Default::default()
    })
    .unwrap();
    let mut tree = clustered_initial(&ModelParameters::zeros(base_layout(d)), 2).unwrap();
    let mut r = 0;
    while !s.is_finished(&tree) {
        r += 1;
        assert!(r <= s.round_limit().unwrap());
        assert!(s.configure_round(r, &all_stores()).is_ok());
        let updates = stores
            .iter()
            .map(|st| st.clustered_update(tree.values(), d, 2).0)
            .collect();
        tree = round(&mut s, r, &tree, updates);
    }
    let leaves: Vec<usize> = stores
        .iter()
        .map(|st| st.clustered_update(tree.values(), d, 2).1)
        .collect();
    let agree = leaves
        .iter()
        .zip(&group)
        .filter(|(l, g)| (**l == 1) == (**g == 0))
        .count();
    assert!(
        agree == 12 || agree == 0,
        "leaves {leaves:?} against groups {group:?}"
    );
    // Each leaf is the exact fit of its members' pooled rows.
    let view = ClusterTree::new(tree.values(), d, 2).unwrap();
    for leaf in view.leaves() {
        let members: Vec<&Store> = stores
            .iter()
            .zip(&leaves)
            .filter(|(_, l)| **l == leaf)
            .map(|(s, _)| s)
            .collect();
        let (mut xtx, mut xty) = (DMatrix::<f64>::zeros(d, d), DVector::<f64>::zeros(d));
        for st in members {
            for (row, y) in st.x.iter().zip(&st.y) {
                let x = DVector::from_column_slice(row);
                xtx += &x * x.transpose();
                xty += &x * *y;
            }
        }
        // A group's model is pulled toward its parent's with strength GROUP_PULL.
        let parent = view.model(view.parent(leaf).unwrap());
        for i in 0..d {
            xtx[(i, i)] += GROUP_PULL;
            xty[i] += GROUP_PULL * parent[i];
        }
        let exact = xtx.cholesky().unwrap().solve(&xty);
        for (a, b) in view.model(leaf).iter().zip(exact.iter()) {
            assert!((a - b).abs() < 1e-9, "leaf {leaf}: {a} against {b}");
        }
    }
    // The root keeps the network-wide model it had when it was split.
    assert!(view.model(0).iter().any(|v| *v != 0.0));
}

#[test]
fn a_tree_out_of_place_is_refused_by_name() {
    let base = ModelParameters::zeros(base_layout(2));
    let good = clustered_initial(&base, 2).unwrap();
    assert!(ClusterTree::new(good.values(), 2, 2).is_ok());
    assert!(ClusterTree::new(&good.values()[1..], 2, 2)
        .unwrap_err()
        .contains("values"));
    let nodes = tree_nodes(2);
    let meta = nodes * 2;
    let mut bad = good.values().to_vec();
    bad[meta + 1] = 7.0;
    assert!(ClusterTree::new(&bad, 2, 2).unwrap_err().contains("node 1"));
    // A child that names a leaf as its parent, or comes before it.
    let mut bad = good.values().to_vec();
    bad[meta + 1] = LEAF;
    bad[meta + nodes + 1] = 1.0;
    assert!(ClusterTree::new(&bad, 2, 2)
        .unwrap_err()
        .contains("out of place"));
    let mut bad = good.values().to_vec();
    bad[meta] = SPLIT;
    assert!(ClusterTree::new(&bad, 2, 2)
        .unwrap_err()
        .contains("two children"));
    assert!(clustered_layout(&base_layout(2), 9).is_err());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

    /// A coordinator's tree of any values is read or refused, and a store's descent of
    /// one that is read always ends at a leaf.
    #[test]
    fn a_tree_of_any_values_is_refused_or_descended(
        meta in proptest::collection::vec(
            proptest::prop_oneof![0.0f64..4.0, proptest::prelude::Just(f64::NAN), proptest::prelude::Just(1e300), -2.0f64..0.0],
            12,
        ),
        whole in proptest::collection::vec(0u8..4, 12),
    ) {
        // Three groups: five nodes of two parameters, then 12 values of tree state.
        let mut values = vec![0.5; 10];
        values.extend(meta.iter().zip(&whole).map(|(m, w)| if *w == 0 { m.trunc() } else { *m }));
        if let Ok(tree) = ClusterTree::new(&values, 2, 3) {
            let path = tree.path(|w| w[0]);
            proptest::prop_assert!(tree.leaves().contains(path.last().unwrap()));
        }
    }
}
