//! Telemetry and health: ingest from MQTT, queries for the API and the
//! dashboard, and device events. Metric names and version sets are interned
//! so each reading's row stays small.

pub mod events;
pub mod ingest;
pub mod query;
pub mod retention;
pub mod views;

use std::collections::HashMap;
use std::sync::Mutex;

use crate::error::Result;
use crate::on_store;
use crate::store::Store;

/// Interned metric names and version sets, cached in memory.
#[derive(Debug, Default)]
pub struct Catalog {
    metrics: Mutex<HashMap<String, i64>>,
    versions: Mutex<HashMap<String, i64>>,
}

impl Catalog {
    /// Ids of metric names, creating the unknown ones.
    pub async fn metric_ids(
        &self,
        store: &Store,
        names: Vec<String>,
    ) -> Result<HashMap<String, i64>> {
        self.ids(store, &self.metrics, names, Table::Metrics).await
    }

    /// Ids of version sets (canonical JSON), creating the unknown ones.
    pub async fn version_ids(
        &self,
        store: &Store,
        sets: Vec<String>,
    ) -> Result<HashMap<String, i64>> {
        self.ids(store, &self.versions, sets, Table::Versions).await
    }

    /// The id of a metric name, if it was ever stored.
    pub async fn find_metric(&self, store: &Store, name: &str) -> Result<Option<i64>> {
        if let Some(id) = self
            .metrics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Ok(Some(*id));
        }
        Ok(
            on_store!(store, pool => sqlx::query_scalar::<_, i64>("SELECT id FROM metric_names WHERE name = $1")
            .bind(name).fetch_optional(pool).await)?,
        )
    }

    async fn ids(
        &self,
        store: &Store,
        cache: &Mutex<HashMap<String, i64>>,
        keys: Vec<String>,
        table: Table,
    ) -> Result<HashMap<String, i64>> {
        let mut out = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = cache.lock().unwrap_or_else(|p| p.into_inner());
            for k in keys {
                match cache.get(&k) {
                    Some(id) => {
                        out.insert(k, *id);
                    }
                    None => missing.push(k),
                }
            }
        }
        missing.sort();
        missing.dedup();
        let (insert, select) = match table {
            Table::Metrics => (
                "INSERT INTO metric_names (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
                "SELECT id FROM metric_names WHERE name = $1",
            ),
            Table::Versions => (
                "INSERT INTO version_sets (versions) VALUES ($1) ON CONFLICT (versions) DO NOTHING",
                "SELECT id FROM version_sets WHERE versions = $1",
            ),
        };
        for k in missing {
            let id: i64 = on_store!(store, pool => {
                sqlx::query(sqlx::AssertSqlSafe(insert)).bind(&k).execute(pool).await?;
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(select)).bind(&k).fetch_one(pool).await
            })?;
            cache
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(k.clone(), id);
            out.insert(k, id);
        }
        Ok(out)
    }
}

/// SQL for the value (a double, NULL when absent) of the metric whose id is
/// `metric` (a parameter or column) in the `telemetry_readings` row `row`: for
/// sums and means. SQLite's JSON parser can be one unit in the last place off
/// beyond about 1e±80, so values answered one by one come from [`metric_text`].
pub(crate) fn metric_value(store: &Store, row: &str, metric: &str) -> String {
    match store {
        Store::Sqlite(_) => {
            format!("CAST(json_extract({row}.metrics, '$.\"' || {metric} || '\"') AS REAL)")
        }
        Store::Postgres(_) => {
            format!("CAST({row}.metrics ->> CAST({metric} AS TEXT) AS DOUBLE PRECISION)")
        }
    }
}

/// SQL for the value of a metric as the text it was stored as (NULL when
/// absent), which parses back to exactly the double that was sent.
pub(crate) fn metric_text(store: &Store, row: &str, metric: &str) -> String {
    match store {
        // `->` answers the stored JSON text of the number as it was written.
        Store::Sqlite(_) => format!("({row}.metrics -> ('$.\"' || {metric} || '\"'))"),
        // jsonb keeps numbers as exact decimals.
        Store::Postgres(_) => format!("({row}.metrics ->> CAST({metric} AS TEXT))"),
    }
}

enum Table {
    Metrics,
    Versions,
}
