//! The identity index, the quarantine, customer keys and erasure on PostgreSQL, written in the
//! same transactions as the events that change them.

use super::*;

impl PostgresLog {
    /// Reads what `decide` needs under the log's write lock, then writes what it decided (events
    /// and identity index changes) in the same transaction.
    pub(crate) async fn commit_identity<T>(
        &self,
        event_ids: &[EventId],
        keys: &[Identifier],
        quarantine: &[QuarantinedRecord],
        decide: impl FnOnce(IdentitySnapshot) -> Result<IdentityCommit<T>>,
    ) -> Result<(AppendOutcome, Vec<u64>, T)> {
        let mut tx = self.pool.begin().await?;
        let head = lock_head(&mut tx).await?;
        let quarantined = insert_quarantine(&mut tx, quarantine).await?;
        let stored: HashMap<EventId, EventRef> = find_in(&mut tx, event_ids)
            .await?
            .into_iter()
            .map(|r| (r.event_id, r))
            .collect();
        let graph = load_graph(&mut tx, keys).await?;
        let customers: Vec<CustomerId> = graph.customers().collect();
        let customer_keys = load_keys(&mut tx, &customers).await?;
        let commit = decide(IdentitySnapshot {
            stored: stored.clone(),
            graph,
            customer_keys,
        })?;
        plan::validate(&commit.appends)?;
        write_identity_changes(&mut tx, &commit.changes).await?;
        let outcome = write_appends(
            &mut tx,
            &commit.appends,
            head,
            commit.order.as_deref(),
            Some(&stored),
        )
        .await?;
        tx.commit().await?;
        Ok((outcome, quarantined, commit.value))
    }
}

/// Inserts refused records into the quarantine; returns their numbers, in order. A record
/// refused before (same source and text) keeps its number and is not stored again.
async fn insert_quarantine(
    conn: &mut PgConnection,
    records: &[QuarantinedRecord],
) -> Result<Vec<u64>> {
    if records.is_empty() {
        return Ok(Vec::new());
    }
    let at: Vec<DateTime<Utc>> = records.iter().map(|r| r.received_at).collect();
    let sources: Vec<Option<&str>> = records.iter().map(|r| r.source.as_deref()).collect();
    let codes: Vec<&str> = records.iter().map(|r| r.code.as_str()).collect();
    let fields: Vec<&str> = records.iter().map(|r| r.field.as_str()).collect();
    let reasons: Vec<&str> = records.iter().map(|r| r.reason.as_str()).collect();
    let raw: Vec<&str> = records.iter().map(|r| r.record.as_str()).collect();
    let keys: Vec<String> = records.iter().map(QuarantinedRecord::record_key).collect();
    sqlx::query(
        "INSERT INTO quarantine (received_at, source, code, field, reason, record, record_key) \
         SELECT a, s, c, f, r, x, k FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], \
         $4::text[], $5::text[], $6::text[], $7::text[]) WITH ORDINALITY \
         AS u(a, s, c, f, r, x, k, n) ORDER BY n ON CONFLICT (record_key) DO NOTHING",
    )
    .bind(&at)
    .bind(&sources)
    .bind(&codes)
    .bind(&fields)
    .bind(&reasons)
    .bind(&raw)
    .bind(&keys)
    .execute(&mut *conn)
    .await?;
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT id, record_key FROM quarantine WHERE record_key = ANY($1)")
            .bind(&keys)
            .fetch_all(&mut *conn)
            .await?;
    let ids: HashMap<String, i64> = rows.into_iter().map(|(id, key)| (key, id)).collect();
    keys.iter()
        .map(|key| {
            let id = ids.get(key).copied().ok_or_else(|| StoreError::Corrupt {
                position: 0,
                reason: "a quarantined record vanished during its insert".into(),
            })?;
            to_u64(id, 0, "quarantine id")
        })
        .collect()
}

/// The holders of `keys` and every pseudonym they hold.
async fn load_graph(conn: &mut PgConnection, keys: &[Identifier]) -> Result<IdentityGraph> {
    let kinds: Vec<&str> = keys.iter().map(|k| k.kind.as_str()).collect();
    let values: Vec<&str> = keys.iter().map(|k| k.value.as_str()).collect();
    let rows = sqlx::query(
        "SELECT i.kind, i.pseudonym, i.customer_id FROM identity_index i \
         WHERE i.customer_id IN (SELECT o.customer_id FROM UNNEST($1::text[], $2::text[]) \
         AS q(kind, pseudonym) JOIN identity_index o \
         ON o.kind = q.kind AND o.pseudonym = q.pseudonym)",
    )
    .bind(&kinds)
    .bind(&values)
    .fetch_all(&mut *conn)
    .await?;
    let rows = rows
        .iter()
        .map(|row| {
            let kind: String = row.try_get(0)?;
            let identifier = Identifier {
                kind: IdentifierKind::new(kind).map_err(|e| StoreError::Corrupt {
                    position: 0,
                    reason: format!("identity index: {e}"),
                })?,
                value: row.try_get(1)?,
            };
            Ok((identifier, CustomerId::from_uuid(row.try_get(2)?)))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut graph = graph_of(rows);
    let blocked: Vec<(String, String)> = sqlx::query_as(
        "SELECT b.kind, b.pseudonym FROM UNNEST($1::text[], $2::text[]) AS q(kind, pseudonym) \
         JOIN blocked_identifiers b ON b.kind = q.kind AND b.pseudonym = q.pseudonym",
    )
    .bind(&kinds)
    .bind(&values)
    .fetch_all(&mut *conn)
    .await?;
    for (kind, value) in blocked {
        if let Some(key) = keys
            .iter()
            .find(|k| k.kind.as_str() == kind && k.value == value)
        {
            graph.block(key.clone());
        }
    }
    Ok(graph)
}

/// The wrapped keys of those of `customers` that have one.
async fn load_keys(
    conn: &mut PgConnection,
    customers: &[CustomerId],
) -> Result<HashMap<CustomerId, Vec<u8>>> {
    if customers.is_empty() {
        return Ok(HashMap::new());
    }
    let ids: Vec<Uuid> = customers.iter().map(|c| c.as_uuid()).collect();
    let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT customer_id, wrapped FROM customer_keys WHERE customer_id = ANY($1::uuid[])",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(c, w)| (CustomerId::from_uuid(c), w))
        .collect())
}

/// Writes merges (re-pointing the absorbed customers' pseudonyms and aliases), links, then
/// new customer keys.
async fn write_identity_changes(conn: &mut PgConnection, changes: &IdentityChanges) -> Result<()> {
    if !changes.merges.is_empty() {
        // Applied at once with each absorbed customer's final survivor, which is what applying
        // them one by one would leave.
        let (absorbed, survivors): (Vec<Uuid>, Vec<Uuid>) = changes
            .final_merges()
            .into_iter()
            .map(|(a, s)| (a.as_uuid(), s.as_uuid()))
            .unzip();
        sqlx::query(
            "UPDATE identity_index i SET customer_id = m.survivor \
             FROM UNNEST($1::uuid[], $2::uuid[]) AS m(absorbed, survivor) \
             WHERE i.customer_id = m.absorbed",
        )
        .bind(&absorbed)
        .bind(&survivors)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "UPDATE customer_aliases a SET survivor = m.survivor \
             FROM UNNEST($1::uuid[], $2::uuid[]) AS m(absorbed, survivor) \
             WHERE a.survivor = m.absorbed",
        )
        .bind(&absorbed)
        .bind(&survivors)
        .execute(&mut *conn)
        .await?;
        sqlx::query(
            "INSERT INTO customer_aliases (absorbed, survivor) \
             SELECT * FROM UNNEST($1::uuid[], $2::uuid[])",
        )
        .bind(&absorbed)
        .bind(&survivors)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::from_write)?;
    }
    if !changes.links.is_empty() {
        let kinds: Vec<&str> = changes.links.iter().map(|(k, _)| k.kind.as_str()).collect();
        let values: Vec<&str> = changes
            .links
            .iter()
            .map(|(k, _)| k.value.as_str())
            .collect();
        let customers: Vec<Uuid> = changes.links.iter().map(|(_, c)| c.as_uuid()).collect();
        sqlx::query(
            "INSERT INTO identity_index (kind, pseudonym, customer_id) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::uuid[])",
        )
        .bind(&kinds)
        .bind(&values)
        .bind(&customers)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::from_write)?;
    }
    for (restored, members) in &changes.restored {
        sqlx::query("DELETE FROM customer_aliases WHERE absorbed = $1")
            .bind(restored.as_uuid())
            .execute(&mut *conn)
            .await?;
        let members: Vec<Uuid> = members.iter().map(|m| m.as_uuid()).collect();
        sqlx::query("UPDATE customer_aliases SET survivor = $1 WHERE absorbed = ANY($2::uuid[])")
            .bind(restored.as_uuid())
            .bind(&members)
            .execute(&mut *conn)
            .await?;
    }
    for (key, holder) in &changes.holders {
        match holder {
            Some(holder) => sqlx::query(
                "INSERT INTO identity_index (kind, pseudonym, customer_id) VALUES ($1, $2, $3) \
                 ON CONFLICT (kind, pseudonym) DO UPDATE SET customer_id = excluded.customer_id",
            )
            .bind(key.kind.as_str())
            .bind(&key.value)
            .bind(holder.as_uuid()),
            None => sqlx::query("DELETE FROM identity_index WHERE kind = $1 AND pseudonym = $2")
                .bind(key.kind.as_str())
                .bind(&key.value),
        }
        .execute(&mut *conn)
        .await?;
    }
    for key in &changes.blocks {
        sqlx::query(
            "INSERT INTO blocked_identifiers (kind, pseudonym) VALUES ($1, $2) \
             ON CONFLICT DO NOTHING",
        )
        .bind(key.kind.as_str())
        .bind(&key.value)
        .execute(&mut *conn)
        .await?;
    }
    if !changes.new_keys.is_empty() {
        let (customers, wrapped): (Vec<Uuid>, Vec<Vec<u8>>) = changes
            .new_keys
            .iter()
            .map(|(c, w)| (c.as_uuid(), w.clone()))
            .unzip();
        sqlx::query(
            "INSERT INTO customer_keys (customer_id, wrapped) \
             SELECT * FROM UNNEST($1::uuid[], $2::bytea[])",
        )
        .bind(&customers)
        .bind(&wrapped)
        .execute(&mut *conn)
        .await
        .map_err(StoreError::from_write)?;
    }
    Ok(())
}

impl PostgresLog {
    pub(crate) async fn customer_keys(
        &self,
        customers: &[CustomerId],
    ) -> Result<HashMap<CustomerId, Vec<u8>>> {
        let mut conn = self.pool.acquire().await?;
        load_keys(&mut conn, customers).await
    }

    /// Erases a customer in one write transaction; see [`super::EventStore::erase`].
    pub(crate) async fn erase(
        &self,
        customer: CustomerId,
        moved_in: &[Position],
        holds_their_data: &(dyn Fn(&str) -> bool + Sync),
        event: impl FnOnce(CustomerId, &[CustomerId]) -> Result<NewEvent>,
    ) -> Result<Erasure> {
        let mut tx = self.pool.begin().await?;
        let head = lock_head(&mut tx).await?;
        let survivor: Option<Uuid> =
            sqlx::query_scalar("SELECT survivor FROM customer_aliases WHERE absorbed = $1")
                .bind(customer.as_uuid())
                .fetch_optional(&mut *tx)
                .await?;
        let live = survivor.map_or(customer, CustomerId::from_uuid);
        let absorbed: Vec<Uuid> =
            sqlx::query_scalar("SELECT absorbed FROM customer_aliases WHERE survivor = $1")
                .bind(live.as_uuid())
                .fetch_all(&mut *tx)
                .await?;
        let mut all = vec![live];
        all.extend(absorbed.into_iter().map(CustomerId::from_uuid));
        let ids: Vec<Uuid> = all.iter().map(|c| c.as_uuid()).collect();
        sqlx::query("DELETE FROM customer_keys WHERE customer_id = ANY($1::uuid[])")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        let positions: Vec<i64> = moved_in.iter().map(|p| to_i64(*p)).collect();
        let moved: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT e.position, s.stream_id, e.payload::text FROM events e \
             JOIN streams s ON s.stream_key = e.stream_key WHERE e.position = ANY($1::bigint[])",
        )
        .bind(&positions)
        .fetch_all(&mut *tx)
        .await?;
        let mut touchpoints_shredded = 0u64;
        for (position, stream, payload) in moved {
            let at = to_u64(position, 0, "position")?;
            if let Some(shredded) = shredded_payload(at, &stream, &payload, &all)? {
                sqlx::query("UPDATE events SET payload = $2::json WHERE position = $1")
                    .bind(position)
                    .bind(shredded)
                    .execute(&mut *tx)
                    .await?;
                touchpoints_shredded += 1;
            }
        }
        let forgotten = sqlx::query("DELETE FROM identity_index WHERE customer_id = $1")
            .bind(live.as_uuid())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let records: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT id, record, reason FROM quarantine")
                .fetch_all(&mut *tx)
                .await?;
        let matched: Vec<i64> = records
            .into_iter()
            .filter(|(_, record, reason)| holds_their_data(record) || holds_their_data(reason))
            .map(|(id, _, _)| id)
            .collect();
        sqlx::query("DELETE FROM quarantine WHERE id = ANY($1::bigint[])")
            .bind(&matched)
            .execute(&mut *tx)
            .await?;
        let append = StreamAppend::new(
            live.stream_id(),
            ExpectedVersion::Any,
            vec![event(live, &all)?],
        );
        let outcome = write_appends(&mut tx, &[append], head, None, None).await?;
        tx.commit().await?;
        // Deleted rows stay in the table files until vacuumed, and VACUUM frees their space
        // without overwriting it: see docs/privacy.md for what that leaves on disk.
        // The events table only when a payload was rewritten: it is the largest by far.
        let vacuum = if touchpoints_shredded > 0 {
            "VACUUM customer_keys, identity_index, quarantine, events"
        } else {
            "VACUUM customer_keys, identity_index, quarantine"
        };
        let scrubbed = match sqlx::query(vacuum).execute(&self.pool).await {
            Ok(_) => true,
            Err(err) => {
                tracing::warn!(error = %err, "VACUUM after an erasure failed");
                false
            }
        };
        Ok(Erasure {
            scrubbed,
            customer: live,
            keys_destroyed: all,
            touchpoints_shredded,
            identifiers_removed: forgotten,
            quarantined_removed: matched.len() as u64,
            position: outcome.head,
        })
    }

    /// Blanks the text of quarantined records received before `before`; returns how many.
    pub(crate) async fn expire_quarantine(&self, before: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE quarantine SET record = '', reason = '', expired_at = now() \
             WHERE received_at < $1 AND expired_at IS NULL",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            if let Err(err) = sqlx::query("VACUUM quarantine").execute(&self.pool).await {
                tracing::warn!(error = %err, "VACUUM after quarantine expiry failed");
            }
        }
        Ok(done.rows_affected())
    }

    pub(crate) async fn quarantined(
        &self,
        after_id: u64,
        max: usize,
    ) -> Result<Vec<QuarantinedRecord>> {
        let rows = sqlx::query(
            "SELECT id, received_at, source, code, field, reason, record, expired_at \
             FROM quarantine WHERE id > $1 ORDER BY id LIMIT $2",
        )
        .bind(to_i64(after_id))
        .bind(to_i64(max as u64))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(QuarantinedRecord {
                    id: to_u64(row.try_get(0)?, 0, "quarantine id")?,
                    received_at: row.try_get(1)?,
                    source: row.try_get(2)?,
                    code: row.try_get(3)?,
                    field: row.try_get(4)?,
                    reason: row.try_get(5)?,
                    record: row.try_get(6)?,
                    expired_at: row.try_get(7)?,
                })
            })
            .collect()
    }

    pub(crate) async fn replace_identity_index(
        &self,
        at: Position,
        changes: &IdentityChanges,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        let now = lock_head(&mut tx).await?;
        if now != at {
            return Err(moved_on(at, now));
        }
        for table in IDENTITY_TABLES {
            sqlx::query(&format!("DELETE FROM {table}"))
                .execute(&mut *tx)
                .await?;
        }
        write_identity_changes(&mut tx, changes).await?;
        tx.commit().await?;
        Ok(())
    }
}
