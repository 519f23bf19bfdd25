//! A store's side of clustered federated learning ([`fedretail_core::clustered`]):
//! any task with exact Newton statistics, wrapped so that its model is a tree of group
//! models. The store joins the group whose model fits its training rows best, and keeps
//! the model on its path (network-wide, group, subgroup) that does best on its own
//! validation days.

use crate::metrics::clearly_better;
use crate::task::{LocalTask, StoreResults, TaskError, TaskMetrics};
use fedretail_core::clustered::fedavg::{clustered_delta_len, write_leaf_delta};
use fedretail_core::clustered::{
    clustered_layout, clustered_statistics_len, write_leaf_statistics, ClusterTree,
};
use fedretail_core::{LocalWork, ModelLayout};
use std::sync::Arc;

/// A task whose model is a tree of up to `max_groups` group models.
pub struct GroupedTask {
    inner: Arc<dyn LocalTask>,
    max_groups: usize,
    layout: ModelLayout,
}

/// The model a store keeps from the tree, and where it sits.
struct Choice<'a> {
    model: &'a [f64],
    node: usize,
    depth: usize,
    leaf: usize,
}

impl GroupedTask {
    pub fn try_new(inner: Arc<dyn LocalTask>, max_groups: usize) -> Result<Self, TaskError> {
        let layout = clustered_layout(&inner.layout(), max_groups)
            .map_err(|e| TaskError::InvalidModel(e.to_string()))?;
        Ok(GroupedTask {
            inner,
            max_groups,
            layout,
        })
    }

    fn tree<'a>(&self, global: &'a [f64]) -> Result<ClusterTree<'a>, TaskError> {
        let d = self.inner.layout().len();
        if global.len() != self.layout.len() {
            return Err(TaskError::WrongParameterCount {
                task: self.inner.task_name(),
                expected: self.layout.len(),
                got: global.len(),
            });
        }
        ClusterTree::new(global, d, self.max_groups).map_err(TaskError::InvalidModel)
    }

    /// The path to the group whose models fit the training rows best (IFCA's rule).
    fn path(&self, tree: &ClusterTree<'_>) -> Vec<usize> {
        tree.path(|w| self.inner.train_loss(w).unwrap_or(f64::INFINITY))
    }

    /// The deepest model on the path that each step down beats clearly (by more than
    /// a standard error of the per-row difference) on the validation days: a group's
    /// model replaces the network's only where the store's own days say it is better.
    /// The store's number of groups is so chosen by validation; the leaf when the task
    /// has no validation days.
    fn choose<'a>(&self, global: &'a [f64]) -> Result<Choice<'a>, TaskError> {
        let tree = self.tree(global)?;
        let path = self.path(&tree);
        let leaf = path.last().copied().unwrap_or(0);
        let Some(mut kept) = self.inner.validation_losses(tree.model(0)) else {
            let depth = path.len() - 1;
            return Ok(Choice {
                model: tree.model(leaf),
                node: leaf,
                depth,
                leaf,
            });
        };
        let (mut node, mut depth) = (0, 0);
        for (d, &n) in path.iter().enumerate().skip(1) {
            match self.inner.validation_losses(tree.model(n)) {
                Some(losses) if clearly_better(&kept, &losses) => {
                    (node, depth, kept) = (n, d, losses);
                }
                _ => break,
            }
        }
        Ok(Choice {
            model: tree.model(node),
            node,
            depth,
            leaf,
        })
    }
}

impl Choice<'_> {
    /// What the store reports about its group: a number, never its rows.
    fn describe(&self, m: &mut TaskMetrics) {
        m.insert("group_leaf".into(), self.leaf as f64);
        m.insert("group_node".into(), self.node as f64);
        m.insert("group_depth".into(), self.depth as f64);
        // A store that keeps a group's model forecasts with the cluster, not the network.
        if self.depth > 0 {
            if let Some(v) = m.remove("forecast_by_federated") {
                m.insert("forecast_by_cluster".into(), v);
            }
        }
    }
}

impl LocalTask for GroupedTask {
    fn task_name(&self) -> &'static str {
        self.inner.task_name()
    }

    fn layout(&self) -> ModelLayout {
        self.layout.clone()
    }

    fn num_train_examples(&self) -> u64 {
        self.inner.num_train_examples()
    }

    fn compute_update(&self, global: &[f64], work: &LocalWork) -> Result<Vec<f64>, TaskError> {
        let tree = self.tree(global)?;
        let leaf = self.path(&tree).last().copied().unwrap_or(0);
        let d = self.inner.layout().len();
        let rows = self.num_train_examples();
        match work {
            LocalWork::ClusteredSecondOrderStatistics => {
                let stats = self
                    .inner
                    .compute_update(tree.model(leaf), &LocalWork::SecondOrderStatistics)?;
                let mut out = vec![0.0; clustered_statistics_len(d, self.max_groups)];
                let mask = self.inner.layout().regularization_mask();
                write_leaf_statistics(&mut out, leaf, rows, &stats, &mask);
                Ok(out)
            }
            LocalWork::ClusteredLocalEpochs(sgd) => {
                let delta = self
                    .inner
                    .compute_update(tree.model(leaf), &LocalWork::LocalEpochs(*sgd))?;
                let mut out = vec![0.0; clustered_delta_len(d, self.max_groups)];
                write_leaf_delta(&mut out, leaf, rows, &delta);
                Ok(out)
            }
            _ => Err(TaskError::UnsupportedWork {
                task: self.inner.task_name(),
                work: "anything but clustered Newton statistics or clustered local epochs on a grouped model",
            }),
        }
    }

    fn evaluate(&self, global: &[f64]) -> Result<TaskMetrics, TaskError> {
        let choice = self.choose(global)?;
        let mut m = self.inner.evaluate(choice.model)?;
        choice.describe(&mut m);
        Ok(m)
    }

    fn train_loss(&self, global: &[f64]) -> Option<f64> {
        let tree = self.tree(global).ok()?;
        let leaf = self.path(&tree).last().copied()?;
        self.inner.train_loss(tree.model(leaf))
    }

    fn validation_losses(&self, global: &[f64]) -> Option<Vec<f64>> {
        self.inner
            .validation_losses(self.choose(global).ok()?.model)
    }

    fn results(&self, global: &[f64]) -> Result<StoreResults, TaskError> {
        let choice = self.choose(global)?;
        let mut results = self.inner.results(choice.model)?;
        choice.describe(&mut results.metrics);
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demand::{DemandDataset, DemandOptions, DemandRows, DemandTask};
    use fedretail_core::clustered::{clustered_initial, group_block_len, tree_nodes};
    use fedretail_core::{newton_statistics_len, ModelParameters};

    fn task() -> GroupedTask {
        let mut rows = DemandRows::new(crate::DEMAND_DIM);
        for i in 0..40 {
            let mut x = vec![0.0; crate::DEMAND_DIM];
            x[0] = 1.0;
            rows.push(&x, 3.0 + (i % 2) as f64, 3.0, 1.0);
        }
        let data = DemandDataset {
            store_id: "s".into(),
            train: rows.clone(),
            validation: rows.clone(),
            test: rows,
            naive_scale: 1.0,
            history_days: 120,
            ..Default::default()
        };
        let inner = DemandTask::new(Arc::new(data), DemandOptions::default());
        GroupedTask::try_new(Arc::new(inner), 2).unwrap()
    }

    #[test]
    fn a_store_sends_its_leafs_statistics_and_only_in_that_block() {
        let t = task();
        let base = ModelParameters::zeros(crate::demand_layout());
        let tree = clustered_initial(&base, 2).unwrap();
        let u = t
            .compute_update(tree.values(), &LocalWork::ClusteredSecondOrderStatistics)
            .unwrap();
        let (d, b) = (crate::DEMAND_DIM, group_block_len(crate::DEMAND_DIM));
        assert_eq!(u.len(), tree_nodes(2) * b);
        assert_eq!(
            (u[0], u[1]),
            (1.0, 40.0),
            "one store of 40 rows in the root"
        );
        let plain = t
            .inner
            .compute_update(base.values(), &LocalWork::SecondOrderStatistics);
        assert_eq!(
            &u[2..2 + newton_statistics_len(d)],
            plain.unwrap().as_slice()
        );
        assert!(u[b..].iter().all(|v| *v == 0.0));
        let e = t
            .compute_update(tree.values(), &LocalWork::SecondOrderStatistics)
            .unwrap_err();
        assert!(matches!(e, TaskError::UnsupportedWork { .. }), "{e}");
        let e = t.evaluate(&tree.values()[1..]).unwrap_err();
        assert!(matches!(e, TaskError::WrongParameterCount { .. }), "{e}");
    }

    #[test]
    fn an_unsplit_tree_serves_the_network_model_and_says_so() {
        let t = task();
        let tree = clustered_initial(&ModelParameters::zeros(crate::demand_layout()), 2).unwrap();
        let m = t.evaluate(tree.values()).unwrap();
        let plain = t
            .inner
            .evaluate(&tree.values()[..crate::DEMAND_DIM])
            .unwrap();
        assert_eq!(m.get("group_depth"), Some(&0.0));
        assert_eq!(m.get("wape_federated"), plain.get("wape_federated"));
    }
}
