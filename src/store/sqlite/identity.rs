//! The identity index, the quarantine, customer keys and erasure on SQLite, written in the
//! same transactions as the events that change them.

use super::*;

/// Inserts refused records into the quarantine; returns their numbers, in order. A record
/// refused before (same source and text) keeps its number and is not stored again.
fn insert_quarantine(db: &RawDb<'_>, records: &[QuarantinedRecord]) -> Result<Vec<u64>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let mut insert = db.prepare(
        "INSERT INTO quarantine (received_at, source, code, field, reason, record, record_key) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (record_key) DO NOTHING",
    )?;
    let mut existing = db.prepare("SELECT id FROM quarantine WHERE record_key = ?1")?;
    let mut ids = Vec::with_capacity(records.len());
    for r in records {
        let key = r.record_key();
        insert.reset()?;
        insert.bind_i64(1, r.received_at.timestamp_micros())?;
        insert.bind_text(2, r.source.as_deref())?;
        insert.bind_text(3, Some(&r.code))?;
        insert.bind_text(4, Some(&r.field))?;
        insert.bind_text(5, Some(&r.reason))?;
        insert.bind_text(6, Some(&r.record))?;
        insert.bind_text(7, Some(&key))?;
        insert.step()?;
        let id = if db.changes() > 0 {
            db.last_insert_rowid()
        } else {
            existing.reset()?;
            existing.bind_text(1, Some(&key))?;
            if !existing.step()? {
                return Err(corrupt(
                    0,
                    "a quarantined record vanished during its insert",
                ));
            }
            existing.column_i64(0)
        };
        ids.push(to_u64(id, 0, "quarantine id")?);
    }
    Ok(ids)
}

/// A row of the quarantine table as SQLite stores it.
#[derive(sqlx::FromRow)]
struct QuarantineRow {
    id: i64,
    received_at: i64,
    source: Option<String>,
    code: String,
    field: String,
    reason: String,
    record: String,
    expired_at: Option<i64>,
}

fn customer_column(stmt: &mut Statement<'_>, index: i32) -> Result<CustomerId> {
    uuid_column(stmt, index, 0)?
        .map(CustomerId::from_uuid)
        .ok_or_else(|| corrupt(0, "identity index: customer id is NULL"))
}

/// The holders of `keys` and every pseudonym they hold.
fn load_graph(db: &RawDb<'_>, keys: &[Identifier]) -> Result<IdentityGraph> {
    let mut owner =
        db.prepare("SELECT customer_id FROM identity_index WHERE kind = ?1 AND pseudonym = ?2")?;
    let mut holders = BTreeSet::new();
    for key in keys {
        owner.reset()?;
        owner.bind_text(1, Some(key.kind.as_str()))?;
        owner.bind_text(2, Some(&key.value))?;
        if owner.step()? {
            holders.insert(customer_column(&mut owner, 0)?);
        }
    }
    let mut held =
        db.prepare("SELECT kind, pseudonym FROM identity_index WHERE customer_id = ?1")?;
    let mut rows = Vec::new();
    for customer in holders {
        held.reset()?;
        held.bind_blob(1, Some(customer.as_uuid().as_bytes()))?;
        while held.step()? {
            let kind = IdentifierKind::new(required_text(&mut held, 0, 0)?)
                .map_err(|e| corrupt(0, format!("identity index: {e}")))?;
            rows.push((
                Identifier {
                    kind,
                    value: required_text(&mut held, 1, 0)?,
                },
                customer,
            ));
        }
    }
    let mut graph = graph_of(rows);
    let mut any = db.prepare("SELECT EXISTS (SELECT 1 FROM blocked_identifiers)")?;
    if any.step()? && any.column_i64(0) != 0 {
        let mut blocked =
            db.prepare("SELECT 1 FROM blocked_identifiers WHERE kind = ?1 AND pseudonym = ?2")?;
        for key in keys {
            blocked.reset()?;
            blocked.bind_text(1, Some(key.kind.as_str()))?;
            blocked.bind_text(2, Some(&key.value))?;
            if blocked.step()? {
                graph.block(key.clone());
            }
        }
    }
    Ok(graph)
}

/// The wrapped keys of those of `customers` that have one.
fn load_keys(
    db: &RawDb<'_>,
    customers: impl Iterator<Item = CustomerId>,
) -> Result<HashMap<CustomerId, Vec<u8>>> {
    let mut stmt = db.prepare("SELECT wrapped FROM customer_keys WHERE customer_id = ?1")?;
    let mut keys = HashMap::new();
    for customer in customers {
        stmt.reset()?;
        stmt.bind_blob(1, Some(customer.as_uuid().as_bytes()))?;
        if stmt.step()? {
            if let Some(wrapped) = stmt.column_blob(0) {
                keys.insert(customer, wrapped.to_vec());
            }
        }
    }
    Ok(keys)
}

/// Writes merges (re-pointing the absorbed customers' pseudonyms and aliases), links, then
/// new customer keys.
fn write_identity_changes(db: &RawDb<'_>, changes: &IdentityChanges) -> Result<()> {
    if !changes.merges.is_empty() {
        let mut repoint =
            db.prepare("UPDATE identity_index SET customer_id = ?2 WHERE customer_id = ?1")?;
        let mut realias =
            db.prepare("UPDATE customer_aliases SET survivor = ?2 WHERE survivor = ?1")?;
        let mut alias =
            db.prepare("INSERT INTO customer_aliases (absorbed, survivor) VALUES (?1, ?2)")?;
        for (absorbed, survivor) in &changes.merges {
            for stmt in [&mut repoint, &mut realias, &mut alias] {
                stmt.reset()?;
                stmt.bind_blob(1, Some(absorbed.as_uuid().as_bytes()))?;
                stmt.bind_blob(2, Some(survivor.as_uuid().as_bytes()))?;
                stmt.step()?;
            }
        }
    }
    if !changes.links.is_empty() {
        let mut link = db.prepare(
            "INSERT INTO identity_index (kind, pseudonym, customer_id) VALUES (?1, ?2, ?3)",
        )?;
        for (key, customer) in &changes.links {
            link.reset()?;
            link.bind_text(1, Some(key.kind.as_str()))?;
            link.bind_text(2, Some(&key.value))?;
            link.bind_blob(3, Some(customer.as_uuid().as_bytes()))?;
            link.step()?;
        }
    }
    if !changes.restored.is_empty() {
        let mut unalias = db.prepare("DELETE FROM customer_aliases WHERE absorbed = ?1")?;
        let mut realias =
            db.prepare("UPDATE customer_aliases SET survivor = ?1 WHERE absorbed = ?2")?;
        for (restored, members) in &changes.restored {
            unalias.reset()?;
            unalias.bind_blob(1, Some(restored.as_uuid().as_bytes()))?;
            unalias.step()?;
            for member in members {
                realias.reset()?;
                realias.bind_blob(1, Some(restored.as_uuid().as_bytes()))?;
                realias.bind_blob(2, Some(member.as_uuid().as_bytes()))?;
                realias.step()?;
            }
        }
    }
    if !changes.holders.is_empty() {
        let mut give = db.prepare(
            "INSERT INTO identity_index (kind, pseudonym, customer_id) VALUES (?1, ?2, ?3) \
             ON CONFLICT (kind, pseudonym) DO UPDATE SET customer_id = excluded.customer_id",
        )?;
        let mut take =
            db.prepare("DELETE FROM identity_index WHERE kind = ?1 AND pseudonym = ?2")?;
        for (key, holder) in &changes.holders {
            let stmt = match holder {
                Some(_) => &mut give,
                None => &mut take,
            };
            stmt.reset()?;
            stmt.bind_text(1, Some(key.kind.as_str()))?;
            stmt.bind_text(2, Some(&key.value))?;
            if let Some(holder) = holder {
                stmt.bind_blob(3, Some(holder.as_uuid().as_bytes()))?;
            }
            stmt.step()?;
        }
    }
    if !changes.blocks.is_empty() {
        let mut block = db.prepare(
            "INSERT INTO blocked_identifiers (kind, pseudonym) VALUES (?1, ?2) \
             ON CONFLICT DO NOTHING",
        )?;
        for key in &changes.blocks {
            block.reset()?;
            block.bind_text(1, Some(key.kind.as_str()))?;
            block.bind_text(2, Some(&key.value))?;
            block.step()?;
        }
    }
    if !changes.new_keys.is_empty() {
        let mut insert =
            db.prepare("INSERT INTO customer_keys (customer_id, wrapped) VALUES (?1, ?2)")?;
        for (customer, wrapped) in &changes.new_keys {
            insert.reset()?;
            insert.bind_blob(1, Some(customer.as_uuid().as_bytes()))?;
            insert.bind_blob(2, Some(wrapped))?;
            insert.step()?;
        }
    }
    Ok(())
}

impl SqliteLog {
    /// Reads what `decide` needs under the write lock, then writes what it decided (events and
    /// identity index changes) in the same transaction.
    pub(crate) async fn commit_identity<T>(
        &self,
        event_ids: &[EventId],
        keys: &[Identifier],
        quarantine: &[QuarantinedRecord],
        decide: impl FnOnce(IdentitySnapshot) -> Result<IdentityCommit<T>>,
    ) -> Result<(AppendOutcome, Vec<u64>, T)> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let result = {
            let mut handle = tx.lock_handle().await?;
            let db = RawDb::new(&mut handle);
            self.checkpoints.note(&db);
            blocking(|| -> Result<(AppendOutcome, Vec<u64>, T)> {
                let quarantined = insert_quarantine(&db, quarantine)?;
                let stored: HashMap<EventId, EventRef> = find_events(&db, event_ids)?
                    .into_iter()
                    .map(|r| (r.event_id, r))
                    .collect();
                let graph = load_graph(&db, keys)?;
                let customer_keys = load_keys(&db, graph.customers())?;
                let commit = decide(IdentitySnapshot {
                    stored: stored.clone(),
                    graph,
                    customer_keys,
                })?;
                plan::validate(&commit.appends)?;
                write_identity_changes(&db, &commit.changes)?;
                let outcome =
                    write_commit(&db, &commit.appends, commit.order.as_deref(), Some(&stored))?;
                Ok((outcome, quarantined, commit.value))
            })?
        };
        tx.commit().await?;
        Ok(result)
    }

    pub(crate) async fn quarantined(
        &self,
        after_id: u64,
        max: usize,
    ) -> Result<Vec<QuarantinedRecord>> {
        let rows: Vec<QuarantineRow> = sqlx::query_as(
            "SELECT id, received_at, source, code, field, reason, record, expired_at \
             FROM quarantine WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(to_i64(after_id))
        .bind(to_i64(max as u64))
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|r| {
                Ok(QuarantinedRecord {
                    id: to_u64(r.id, 0, "quarantine id")?,
                    received_at: from_micros(r.received_at, 0)?,
                    source: r.source,
                    code: r.code,
                    field: r.field,
                    reason: r.reason,
                    record: r.record,
                    expired_at: r.expired_at.map(|at| from_micros(at, 0)).transpose()?,
                })
            })
            .collect()
    }

    pub(crate) async fn customer_keys(
        &self,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, Vec<u8>>> {
        self.read(|db| load_keys(db, customers.iter().copied()))
            .await
    }

    /// Erases a customer in one write transaction; see [`super::EventStore::erase`].
    pub(crate) async fn erase(
        &self,
        customer: CustomerId,
        moved_in: &[Position],
        holds_their_data: &(dyn Fn(&str) -> bool + Sync),
        event: impl FnOnce(CustomerId, &[CustomerId]) -> Result<NewEvent>,
    ) -> Result<Erasure> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        let erasure = {
            let mut handle = tx.lock_handle().await?;
            let db = RawDb::new(&mut handle);
            blocking(|| -> Result<Erasure> {
                let uuid = |c: CustomerId| c.as_uuid();
                let mut survivor =
                    db.prepare("SELECT survivor FROM customer_aliases WHERE absorbed = ?1")?;
                survivor.bind_blob(1, Some(uuid(customer).as_bytes()))?;
                let live = if survivor.step()? {
                    customer_column(&mut survivor, 0)?
                } else {
                    customer
                };
                drop(survivor);
                let mut all = vec![live];
                let mut absorbed =
                    db.prepare("SELECT absorbed FROM customer_aliases WHERE survivor = ?1")?;
                absorbed.bind_blob(1, Some(uuid(live).as_bytes()))?;
                while absorbed.step()? {
                    all.push(customer_column(&mut absorbed, 0)?);
                }
                drop(absorbed);
                let mut delete_key =
                    db.prepare("DELETE FROM customer_keys WHERE customer_id = ?1")?;
                for c in &all {
                    delete_key.reset()?;
                    delete_key.bind_blob(1, Some(uuid(*c).as_bytes()))?;
                    delete_key.step()?;
                }
                drop(delete_key);
                let mut read = db.prepare(
                    "SELECT s.stream_id, e.payload FROM events e \
                     JOIN streams s ON s.stream_key = e.stream_key WHERE e.position = ?1",
                )?;
                let mut rewrite =
                    db.prepare("UPDATE events SET payload = ?2 WHERE position = ?1")?;
                let mut touchpoints_shredded = 0u64;
                for position in moved_in {
                    read.reset()?;
                    read.bind_i64(1, to_i64(*position))?;
                    if !read.step()? {
                        continue;
                    }
                    let stream = read.column_text(0).unwrap_or_default().to_owned();
                    let payload = read.column_text(1).unwrap_or_default().to_owned();
                    let Some(shredded) = shredded_payload(*position, &stream, &payload, &all)?
                    else {
                        continue;
                    };
                    rewrite.reset()?;
                    rewrite.bind_i64(1, to_i64(*position))?;
                    rewrite.bind_text(2, Some(&shredded))?;
                    rewrite.step()?;
                    touchpoints_shredded += 1;
                }
                drop((read, rewrite));
                let mut forget = db.prepare("DELETE FROM identity_index WHERE customer_id = ?1")?;
                forget.bind_blob(1, Some(uuid(live).as_bytes()))?;
                forget.step()?;
                let identifiers_removed = to_u64(db.changes(), 0, "identifiers removed")?;
                drop(forget);
                let mut scan = db.prepare("SELECT id, record, reason FROM quarantine")?;
                let mut matched = Vec::new();
                while scan.step()? {
                    let id = scan.column_i64(0);
                    let held = scan.column_text(1).is_some_and(holds_their_data)
                        || scan.column_text(2).is_some_and(holds_their_data);
                    if held {
                        matched.push(id);
                    }
                }
                drop(scan);
                let mut delete = db.prepare("DELETE FROM quarantine WHERE id = ?1")?;
                for id in &matched {
                    delete.reset()?;
                    delete.bind_i64(1, *id)?;
                    delete.step()?;
                }
                let append = StreamAppend::new(
                    live.stream_id(),
                    ExpectedVersion::Any,
                    vec![event(live, &all)?],
                );
                let outcome = write_commit(&db, &[append], None, None)?;
                Ok(Erasure {
                    customer: live,
                    keys_destroyed: all,
                    touchpoints_shredded,
                    identifiers_removed,
                    quarantined_removed: matched.len() as u64,
                    position: outcome.head,
                    scrubbed: false,
                })
            })?
        };
        tx.commit().await?;
        let mut erasure = erasure;
        erasure.scrubbed = self.empty_wal().await;
        Ok(erasure)
    }

    /// Copies the WAL back into the database file and empties it, since it still holds pages
    /// as they were before a deletion. Whether it could: a reader holding an old snapshot for
    /// longer than the busy timeout keeps the WAL (the failure is logged, not raised: the
    /// deletion itself is committed).
    async fn empty_wal(&self) -> bool {
        let done: std::result::Result<(i64, i64, i64), sqlx::Error> =
            sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.writer)
                .await;
        match done {
            Ok((0, _, _)) => true,
            Ok(_) => {
                tracing::warn!("the WAL could not be emptied: a reader holds an old snapshot");
                false
            }
            Err(err) => {
                tracing::warn!(error = %err, "the WAL could not be emptied");
                false
            }
        }
    }

    /// Blanks the text of quarantined records received before `before`; returns how many.
    pub(crate) async fn expire_quarantine(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE quarantine SET record = '', reason = '', expired_at = ? \
             WHERE received_at < ? AND expired_at IS NULL",
        )
        .bind(Utc::now().timestamp_micros())
        .bind(before.timestamp_micros())
        .execute(&self.writer)
        .await?;
        if done.rows_affected() > 0 {
            self.empty_wal().await;
        }
        Ok(done.rows_affected())
    }

    pub(crate) async fn replace_identity_index(
        &self,
        at: Position,
        changes: &IdentityChanges,
    ) -> Result<()> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        {
            let mut handle = tx.lock_handle().await?;
            let db = RawDb::new(&mut handle);
            blocking(|| -> Result<()> {
                let now = head(&db)?;
                if now != at {
                    return Err(moved_on(at, now));
                }
                for table in IDENTITY_TABLES {
                    db.prepare(&format!("DELETE FROM {table}"))?.step()?;
                }
                write_identity_changes(&db, changes)
            })?;
        }
        tx.commit().await?;
        Ok(())
    }
}
