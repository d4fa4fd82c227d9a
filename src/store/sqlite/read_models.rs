//! The read models' tables on SQLite where they differ from PostgreSQL: profiles committed
//! with their checkpoint, and segment memberships judged and applied in one write.

use super::*;

/// One customer's scores, tags and memberships, as [`STANDING_SQL`] reads them: recency,
/// frequency, monetary, r, f, m, RFM segment, tier, stage, tags and segments (each joined by
/// U+001F).
pub(crate) type StandingRow = (
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

/// The saved segments `(name, rule, purpose)` and the standings of the customers asked for.
pub(crate) type Judging = (
    Vec<(String, String, Option<String>)>,
    HashMap<CustomerId, StandingRow>,
);

/// A customer's standing (`?1`: the customer id).
pub(crate) const STANDING_SQL: &str = "SELECT s.recency_days, s.frequency, s.monetary_minor, \
     s.r, s.f, s.m, s.rfm_segment, s.tier, s.stage, \
     (SELECT group_concat(tag, char(31)) FROM customer_tags WHERE customer_id = ?1), \
     (SELECT group_concat(segment, char(31)) FROM segment_members WHERE customer_id = ?1) \
     FROM (SELECT 1) LEFT JOIN customer_scores s ON s.customer_id = ?1";

/// The saved segments `(name, rule, purpose)` and, unless there are none, the standing of each
/// of `customers` (the columns of [`STANDING_SQL`]).
fn read_judging(db: &RawDb<'_>, customers: &[CustomerId]) -> Result<Judging> {
    let mut rules = Vec::new();
    let mut stmt = db.prepare("SELECT name, rule, purpose FROM segments ORDER BY name")?;
    while stmt.step()? {
        let name = stmt.column_text(0).unwrap_or_default().to_owned();
        let rule = stmt.column_text(1).unwrap_or_default().to_owned();
        let purpose = stmt.column_text(2).map(str::to_owned);
        rules.push((name, rule, purpose));
    }
    drop(stmt);
    let mut found = HashMap::with_capacity(customers.len());
    if rules.is_empty() {
        return Ok((rules, found));
    }
    let mut stmt = db.prepare(STANDING_SQL)?;
    for customer in customers {
        stmt.reset()?;
        stmt.bind_blob(1, Some(customer.as_uuid().as_bytes()))?;
        if !stmt.step()? {
            continue;
        }
        let int = |stmt: &Statement<'_>, i| (!stmt.is_null(i)).then(|| stmt.column_i64(i));
        let row: StandingRow = (
            int(&stmt, 0),
            int(&stmt, 1),
            int(&stmt, 2),
            int(&stmt, 3),
            int(&stmt, 4),
            int(&stmt, 5),
            stmt.column_text(6).map(str::to_owned),
            stmt.column_text(7).map(str::to_owned),
            stmt.column_text(8).map(str::to_owned),
            stmt.column_text(9).map(str::to_owned),
            stmt.column_text(10).map(str::to_owned),
        );
        found.insert(*customer, row);
    }
    Ok((rules, found))
}

/// Records segment entries and exits `(segment, customer, entered)` at `at` (microseconds),
/// inside the caller's transaction; returns the indices of those that changed something.
fn apply_on(db: &RawDb<'_>, changes: &[(&str, CustomerId, bool)], at: i64) -> Result<Vec<usize>> {
    let mut enter = db.prepare(
        "INSERT INTO segment_members (segment, customer_id, since) \
         SELECT ?1, ?2, ?3 WHERE EXISTS (SELECT 1 FROM segments WHERE name = ?1) \
         ON CONFLICT (segment, customer_id) DO NOTHING",
    )?;
    let mut leave =
        db.prepare("DELETE FROM segment_members WHERE segment = ?1 AND customer_id = ?2")?;
    let mut log = db.prepare(
        "INSERT INTO segment_log (segment, customer_id, entered, at) VALUES (?1, ?2, ?3, ?4)",
    )?;
    let mut applied = Vec::new();
    for (i, (segment, customer, entered)) in changes.iter().enumerate() {
        let id = customer.as_uuid();
        let stmt = if *entered { &mut enter } else { &mut leave };
        stmt.reset()?;
        stmt.bind_text(1, Some(segment))?;
        stmt.bind_blob(2, Some(id.as_bytes()))?;
        if *entered {
            stmt.bind_i64(3, at)?;
        }
        stmt.step()?;
        if db.changes() > 0 {
            log.reset()?;
            log.bind_text(1, Some(segment))?;
            log.bind_blob(2, Some(id.as_bytes()))?;
            log.bind_i64(3, i64::from(*entered))?;
            log.bind_i64(4, at)?;
            log.step()?;
            applied.push(i);
        }
    }
    Ok(applied)
}

impl SqliteLog {
    /// The `state` of each of `customers` that has a row in the read-model table `table`.
    pub(crate) async fn load_states(
        &self,
        table: &str,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, String>> {
        let sql = format!("SELECT state FROM {table} WHERE customer_id = ?1");
        self.read(|db| {
            let mut stmt = db.prepare(&sql)?;
            let mut found = HashMap::with_capacity(customers.len());
            for customer in customers {
                stmt.reset()?;
                stmt.bind_blob(1, Some(customer.as_uuid().as_bytes()))?;
                if stmt.step()? {
                    if let Some(state) = stmt.column_text(0) {
                        found.insert(*customer, state.to_owned());
                    }
                }
            }
            Ok(found)
        })
        .await
    }

    /// Reads what judging `customers` needs (the saved segments and each customer's standing),
    /// lets `judge` decide the entries and exits `(segment, customer, entered)`, and records
    /// them, all in one transaction on the writing connection
    /// with SQLite's own statements: two hand-overs to the driver in all. Returns the changes
    /// that changed something.
    pub(crate) async fn judge_memberships<F>(
        &self,
        customers: &[CustomerId],
        at: i64,
        judge: F,
    ) -> Result<Vec<(String, CustomerId, bool)>>
    where
        F: FnOnce(
            Vec<(String, String, Option<String>)>,
            HashMap<CustomerId, StandingRow>,
        ) -> Vec<(String, CustomerId, bool)>,
    {
        let mut conn = self.writer.acquire().await?;
        let mut handle = conn.lock_handle().await?;
        let db = RawDb::new(&mut handle);
        blocking(|| -> Result<Vec<(String, CustomerId, bool)>> {
            run(&db, "BEGIN IMMEDIATE")?;
            let work = || -> Result<Vec<(String, CustomerId, bool)>> {
                let (rules, rows) = read_judging(&db, customers)?;
                if rules.is_empty() {
                    return Ok(Vec::new());
                }
                let changes = judge(rules, rows);
                let borrowed: Vec<(&str, CustomerId, bool)> = changes
                    .iter()
                    .map(|(s, c, e)| (s.as_str(), *c, *e))
                    .collect();
                let applied = apply_on(&db, &borrowed, at)?;
                Ok(applied.into_iter().map(|i| changes[i].clone()).collect())
            };
            match work() {
                Ok(applied) => {
                    run(&db, "COMMIT")?;
                    Ok(applied)
                }
                Err(e) => {
                    // The error is what matters; a failed rollback leaves SQLite to roll back.
                    let _ = run(&db, "ROLLBACK");
                    Err(e)
                }
            }
        })
    }

    /// Writes read-model rows `(customer, merged_into, state)` to `table` and moves the
    /// checkpoint `name` from `from` to `to`, in one transaction; `false`, writing nothing, if
    /// the checkpoint is not at `from`.
    pub(crate) async fn commit_states(
        &self,
        name: &str,
        table: &str,
        from: u64,
        to: u64,
        rows: &[(CustomerId, Option<CustomerId>, &str)],
    ) -> Result<bool> {
        let upsert = format!(
            "INSERT INTO {table} (customer_id, merged_into, state) VALUES (?1, ?2, ?3) \
             ON CONFLICT (customer_id) DO UPDATE SET merged_into = excluded.merged_into, \
             state = excluded.state"
        );
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let moved = {
            let mut handle = tx.lock_handle().await?;
            let db = RawDb::new(&mut handle);
            self.checkpoints.note(&db);
            blocking(|| -> Result<bool> {
                let mut current =
                    db.prepare("SELECT position FROM projection_checkpoints WHERE name = ?1")?;
                current.bind_text(1, Some(name))?;
                let at = if current.step()? {
                    current.column_i64(0)
                } else {
                    0
                };
                drop(current);
                if at != to_i64(from) {
                    return Ok(false);
                }
                let mut mv = db.prepare(
                    "INSERT INTO projection_checkpoints (name, position) VALUES (?1, ?2) \
                     ON CONFLICT (name) DO UPDATE SET position = excluded.position",
                )?;
                mv.bind_text(1, Some(name))?;
                mv.bind_i64(2, to_i64(to))?;
                mv.step()?;
                drop(mv);
                let mut insert = db.prepare(&upsert)?;
                for (customer, merged_into, state) in rows {
                    insert.reset()?;
                    insert.bind_blob(1, Some(customer.as_uuid().as_bytes()))?;
                    let merged = merged_into.map(|m| m.as_uuid());
                    insert.bind_blob(2, merged.as_ref().map(|m| m.as_bytes().as_slice()))?;
                    insert.bind_text(3, Some(state))?;
                    insert.step()?;
                }
                Ok(true)
            })?
        };
        if moved {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(moved)
    }
}
