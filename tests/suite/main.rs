//! Patron on real databases: the event store, ingestion and privacy, each test run against SQLite and,
//! when `PATRON_TEST_POSTGRES_URL` names a server, PostgreSQL, on its own fresh database.

mod helpers;

mod access;
mod analytics;
mod append;
mod batching;
mod concurrency;
mod correction;
mod correction_properties;
mod edge;
mod graphql;
mod http;
mod idempotency;
mod ingest;
mod privacy;
mod projection;
mod properties;
mod reading;
mod rules;
