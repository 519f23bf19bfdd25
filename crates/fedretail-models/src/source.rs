//! Where a store's agent gets a job's task: built from the store's own data for the
//! job's spec. The agent does not read data itself, so that it knows nothing of file
//! formats or SQL; `fedretail-data` implements this for a store's export.

use crate::task::LocalTask;
use fedretail_core::tabular::TableSummary;
use fedretail_core::{CheckedTask, TaskKind};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A task being prepared; Err carries why the store cannot take part, in words.
pub type PrepareFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Arc<dyn LocalTask>, String>> + Send + 'a>>;

/// Builds the store's task for a job's spec from the store's own data.
pub trait TaskSource: Send + Sync {
    fn prepare<'a>(&'a self, spec: &'a CheckedTask) -> PrepareFuture<'a>;

    /// Aggregates of the store's table for a task whose encoding the stores agree on
    /// first (a tabular task); Err says why the store cannot take part.
    fn describe<'a>(&'a self, spec: &'a CheckedTask) -> DescribeFuture<'a> {
        let reason = format!(
            "this agent cannot describe its data for task '{}'",
            spec.kind()
        );
        Box::pin(std::future::ready(Err(reason)))
    }
}

/// A store's description being computed.
pub type DescribeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<TableSummary, String>> + Send + 'a>>;

/// Tasks prepared in advance, one per task kind (the simulations prepare every
/// store's data before the network starts, to time it apart).
#[derive(Default, Clone)]
pub struct FixedTasks {
    tasks: BTreeMap<TaskKind, Arc<dyn LocalTask>>,
}

impl FixedTasks {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, kind: TaskKind, task: Arc<dyn LocalTask>) -> Self {
        self.tasks.insert(kind, task);
        self
    }
}

impl TaskSource for FixedTasks {
    fn prepare<'a>(&'a self, spec: &'a CheckedTask) -> PrepareFuture<'a> {
        let found = self
            .tasks
            .get(&spec.kind())
            .cloned()
            .ok_or_else(|| format!("this agent was set up without task '{}'", spec.kind()));
        Box::pin(std::future::ready(found))
    }
}
