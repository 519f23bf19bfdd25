//! Queries planned once per process and run for every store.
//!
//! Planning a feature query costs DataFusion several times what running it on one
//! store's few thousand grid rows does, and a network prepares every store with the
//! same queries. So each query is planned once, against tables that read their rows
//! from the run: a store's run carries its own tables ([`StoreTables`], an extension
//! of the run's session config), and every per-store number is a column of one of
//! those tables, never a literal in the SQL. A plan is reset before each run, so no
//! state of one store's run (a join's build side) reaches another's.

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{reset_plan_states, Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use datafusion::prelude::{SessionConfig, SessionContext};
use std::collections::HashMap;
use std::sync::Arc;

/// One store's tables for one run of a planned query, by name.
#[derive(Debug, Default, Clone)]
pub(crate) struct StoreTables {
    tables: HashMap<&'static str, Vec<RecordBatch>>,
}

impl StoreTables {
    pub(crate) fn with(mut self, name: &'static str, batches: Vec<RecordBatch>) -> Self {
        self.tables.insert(name, batches);
        self
    }
}

/// A query's inputs: each table's name and schema.
pub(crate) type Inputs<'a> = &'a [(&'static str, SchemaRef)];

/// A session whose tables are placeholders for the stores' own.
pub(crate) fn planning_session(inputs: Inputs<'_>) -> Result<SessionContext> {
    let mut config = config();
    // A dynamic filter is state a plan carries from one run to the next.
    config
        .options_mut()
        .optimizer
        .enable_dynamic_filter_pushdown = false;
    let ctx = SessionContext::new_with_config(config);
    for (name, schema) in inputs {
        add_input(&ctx, name, schema.clone())?;
    }
    Ok(ctx)
}

fn config() -> SessionConfig {
    // One partition: stores are prepared in parallel already.
    SessionConfig::new().with_target_partitions(1)
}

/// Register `name` in a planning session as a table read from each run's store.
pub(crate) fn add_input(ctx: &SessionContext, name: &'static str, schema: SchemaRef) -> Result<()> {
    ctx.register_table(name, Arc::new(StoreTable { name, schema }))?;
    Ok(())
}

/// Plan `sql` once, in a planning session.
pub(crate) async fn plan(ctx: &SessionContext, sql: &str) -> Result<Arc<dyn ExecutionPlan>> {
    ctx.sql(sql).await?.create_physical_plan().await
}

/// Run a planned query over one store's tables.
pub(crate) async fn run(
    plan: &Arc<dyn ExecutionPlan>,
    tables: &StoreTables,
) -> Result<Vec<RecordBatch>> {
    let fresh = reset_plan_states(plan.clone())?;
    let config = config().with_extension(Arc::new(tables.clone()));
    let task = Arc::new(TaskContext::default().with_session_config(config));
    datafusion::physical_plan::collect(fresh, task).await
}

/// A table of a planning session: its rows come from the store of each run.
#[derive(Debug)]
struct StoreTable {
    name: &'static str,
    schema: SchemaRef,
}

#[async_trait]
impl TableProvider for StoreTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let exec = StoreTableExec::try_new(self.name, &self.schema, projection.cloned())?;
        Ok(Arc::new(exec))
    }
}

/// The scan of a [`StoreTable`]: the run's store's rows, projected.
#[derive(Debug)]
struct StoreTableExec {
    name: &'static str,
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl StoreTableExec {
    fn try_new(
        name: &'static str,
        schema: &SchemaRef,
        projection: Option<Vec<usize>>,
    ) -> Result<Self> {
        let projected = match &projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => schema.clone(),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(projected),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(StoreTableExec {
            name,
            projection,
            properties: Arc::new(properties),
        })
    }
}

impl DisplayAs for StoreTableExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "StoreTableExec: {}", self.name)
    }
}

impl ExecutionPlan for StoreTableExec {
    fn name(&self) -> &str {
        "StoreTableExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let missing =
            || DataFusionError::Execution(format!("no rows given for table {}", self.name));
        let tables = context
            .session_config()
            .get_extension::<StoreTables>()
            .ok_or_else(missing)?;
        let batches = tables.tables.get(self.name).ok_or_else(missing)?;
        let projected = batches
            .iter()
            .map(|b| match &self.projection {
                Some(p) => b.project(p),
                None => Ok(b.clone()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let stream = MemoryStream::try_new(projected, self.schema(), None)?;
        Ok(Box::pin(stream))
    }
}
