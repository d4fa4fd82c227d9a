//! The event store's errors, each with a stable code for APIs and logs.

use patron_domain::upcast::UpcastError;
use patron_domain::{EventId, ExpectedVersion, Position, StreamId, StreamVersion};
use thiserror::Error;

/// Everything that can go wrong reading or writing the event log.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The stream is not at the version the writer expected; nothing was written.
    #[error("version conflict on stream {stream_id}: expected {expected}, but it is at version {actual}")]
    Conflict {
        /// The stream whose check failed.
        stream_id: StreamId,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's version at the time of the append.
        actual: StreamVersion,
    },
    /// One append carries the same event id twice.
    #[error("event {event_id} appears twice in one append")]
    DuplicateInAppend {
        /// The repeated id.
        event_id: EventId,
    },
    /// One append names the same stream twice.
    #[error(
        "stream {stream_id} appears twice in one append: give all its events in one StreamAppend"
    )]
    StreamRepeated {
        /// The repeated stream.
        stream_id: StreamId,
    },
    /// A stream append has no events.
    #[error("the append to stream {stream_id} has no events")]
    EmptyAppend {
        /// The stream named.
        stream_id: StreamId,
    },
    /// The database URL names no supported store.
    #[error(
        "unsupported database URL {url:?}: expected sqlite://PATH or postgres://HOST/DATABASE"
    )]
    UnsupportedUrl {
        /// The URL given (without its password).
        url: String,
    },
    /// Another process wrote the same stream version or event id between our check and our write.
    #[error(
        "another writer changed the log during this append ({detail}); nothing was written, retry"
    )]
    WriteRace {
        /// The database's message.
        detail: String,
    },
    /// A stored row cannot be decoded.
    #[error("the event at position {position} cannot be read: {reason}")]
    Corrupt {
        /// Where it is.
        position: Position,
        /// What is wrong.
        reason: String,
    },
    /// A stored profile does not read as a profile.
    #[error("the stored profile of {customer} is unreadable: {reason}")]
    UnreadableProfile {
        /// Whose.
        customer: patron_domain::customer::CustomerId,
        /// Why.
        reason: String,
    },
    /// What a decision read changed before its commit (an identifier changed hands); nothing
    /// was written: decide again.
    #[error("the decision is stale: {reason}; nothing was written, decide again")]
    Stale {
        /// What changed.
        reason: String,
    },
    /// The caller of an identity commit abandoned it; nothing was written.
    #[error("the commit was abandoned: {reason}")]
    Abandoned {
        /// Why.
        reason: String,
    },
    /// An old event could not be brought to its current shape.
    #[error(transparent)]
    Upcast(#[from] UpcastError),
    /// The database failed.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// The schema could not be migrated.
    #[error("schema migration failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    /// A stable, machine-readable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Conflict { .. } => "VERSION_CONFLICT",
            Self::DuplicateInAppend { .. } => "DUPLICATE_IN_APPEND",
            Self::StreamRepeated { .. } => "STREAM_REPEATED",
            Self::EmptyAppend { .. } => "EMPTY_APPEND",
            Self::UnsupportedUrl { .. } => "UNSUPPORTED_DATABASE_URL",
            Self::WriteRace { .. } => "WRITE_RACE",
            Self::Corrupt { .. } => "CORRUPT_EVENT",
            Self::Stale { .. } => "STALE_DECISION",
            Self::UnreadableProfile { .. } => "UNREADABLE_ROW",
            Self::Abandoned { .. } => "COMMIT_ABANDONED",
            Self::Upcast(_) => "UPCAST_FAILED",
            Self::Database(_) => "DATABASE_ERROR",
            Self::Migrate(_) => "MIGRATION_FAILED",
        }
    }

    /// Turns a unique violation raised by the database into [`StoreError::WriteRace`].
    pub(crate) fn from_write(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::WriteRace {
                detail: db.message().to_owned(),
            },
            _ => Self::Database(err),
        }
    }
}

/// Results of event store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
