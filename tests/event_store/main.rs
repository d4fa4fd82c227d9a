//! The event store's behaviour, run against SQLite and, when `PATRON_TEST_POSTGRES_URL` names a
//! server, PostgreSQL: each test gets its own fresh database.

mod helpers;

mod append;
mod concurrency;
mod idempotency;
mod properties;
mod reading;
