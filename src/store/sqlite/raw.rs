//! A small safe layer over SQLite's C API for the event log's hot paths.
//!
//! The driver hands every row from its worker thread to the caller one by one, copying each
//! value; on the paths that move thousands of rows per call (reading the log, inserting event
//! rows) that costs more than SQLite itself. There, the store locks the connection out of the
//! driver (`SqliteConnection::lock_handle`) and steps its own prepared statements. Everything
//! else (connections, migrations, transactions) stays with the driver.

use std::ffi::{c_char, c_int, CStr};
use std::marker::PhantomData;
use std::ptr::NonNull;

use libsqlite3_sys as ffi;
use sqlx::sqlite::LockedSqliteHandle;

/// An error returned by SQLite.
#[derive(Debug)]
pub(crate) struct RawError {
    /// SQLite's extended result code.
    pub code: c_int,
    /// SQLite's message.
    pub message: String,
}

impl RawError {
    /// Whether a UNIQUE or PRIMARY KEY constraint failed.
    pub fn is_unique_violation(&self) -> bool {
        self.code == ffi::SQLITE_CONSTRAINT_UNIQUE || self.code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY
    }
}

impl std::fmt::Display for RawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLite code {})", self.message, self.code)
    }
}

/// A database connection locked out of the driver for as long as `'c`.
pub(crate) struct RawDb<'c> {
    db: NonNull<ffi::sqlite3>,
    _lock: PhantomData<&'c mut ()>,
}

impl<'c> RawDb<'c> {
    /// Borrows the connection behind a locked handle.
    pub fn new(handle: &'c mut LockedSqliteHandle<'_>) -> Self {
        Self {
            db: handle.as_raw_handle(),
            _lock: PhantomData,
        }
    }

    fn error(&self, code: c_int) -> RawError {
        // SAFETY: the handle is open and locked for us; sqlite3_errmsg returns a NUL-terminated
        // string owned by SQLite, copied before any other call can change it.
        let message = unsafe {
            let msg = ffi::sqlite3_errmsg(self.db.as_ptr());
            if msg.is_null() {
                String::from("unknown error")
            } else {
                CStr::from_ptr(msg).to_string_lossy().into_owned()
            }
        };
        let extended = unsafe { ffi::sqlite3_extended_errcode(self.db.as_ptr()) };
        RawError {
            code: if extended != 0 { extended } else { code },
            message,
        }
    }

    /// Compiles one SQL statement.
    pub fn prepare(&self, sql: &str) -> Result<Statement<'_>, RawError> {
        let len = c_int::try_from(sql.len()).map_err(|_| RawError {
            code: ffi::SQLITE_TOOBIG,
            message: "statement too long".into(),
        })?;
        let mut stmt = std::ptr::null_mut();
        // SAFETY: `sql` is valid for `len` bytes; SQLite writes a statement pointer or null.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                self.db.as_ptr(),
                sql.as_ptr().cast::<c_char>(),
                len,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(self.error(rc));
        }
        let stmt = NonNull::new(stmt).ok_or_else(|| RawError {
            code: ffi::SQLITE_MISUSE,
            message: "empty statement".into(),
        })?;
        Ok(Statement { stmt, db: self })
    }

    /// How many rows the last statement inserted, updated or deleted.
    pub fn changes(&self) -> i64 {
        // SAFETY: the handle is open and locked for us.
        unsafe { ffi::sqlite3_changes64(self.db.as_ptr()) }
    }

    /// The rowid of the last row inserted on this connection.
    pub fn last_insert_rowid(&self) -> i64 {
        // SAFETY: the handle is open and locked for us.
        unsafe { ffi::sqlite3_last_insert_rowid(self.db.as_ptr()) }
    }

    /// Pages this connection has written to the database or its WAL since it was opened.
    pub fn pages_written(&self) -> i64 {
        let (mut current, mut highest) = (0, 0);
        // SAFETY: the handle is open and locked for us; SQLite writes the two integers.
        let rc = unsafe {
            ffi::sqlite3_db_status(
                self.db.as_ptr(),
                ffi::SQLITE_DBSTATUS_CACHE_WRITE,
                &mut current,
                &mut highest,
                0,
            )
        };
        if rc == ffi::SQLITE_OK {
            i64::from(current)
        } else {
            0
        }
    }
}

/// A prepared statement, finalized when dropped.
pub(crate) struct Statement<'db> {
    stmt: NonNull<ffi::sqlite3_stmt>,
    db: &'db RawDb<'db>,
}

fn transient() -> ffi::sqlite3_destructor_type {
    ffi::SQLITE_TRANSIENT()
}

impl Statement<'_> {
    fn check(&self, rc: c_int) -> Result<(), RawError> {
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(self.db.error(rc))
        }
    }

    /// Binds an integer to parameter `index` (1-based).
    pub fn bind_i64(&mut self, index: c_int, value: i64) -> Result<(), RawError> {
        // SAFETY: the statement is live; SQLite checks the index.
        let rc = unsafe { ffi::sqlite3_bind_int64(self.stmt.as_ptr(), index, value) };
        self.check(rc)
    }

    /// Binds text (copied by SQLite), or NULL.
    pub fn bind_text(&mut self, index: c_int, value: Option<&str>) -> Result<(), RawError> {
        let rc = match value {
            // SAFETY: the pointer is valid for `len` bytes and SQLite copies them (TRANSIENT).
            Some(text) => unsafe {
                ffi::sqlite3_bind_text64(
                    self.stmt.as_ptr(),
                    index,
                    text.as_ptr().cast::<c_char>(),
                    text.len() as u64,
                    transient(),
                    ffi::SQLITE_UTF8 as u8,
                )
            },
            // SAFETY: the statement is live.
            None => unsafe { ffi::sqlite3_bind_null(self.stmt.as_ptr(), index) },
        };
        self.check(rc)
    }

    /// Binds a blob (copied by SQLite), or NULL.
    pub fn bind_blob(&mut self, index: c_int, value: Option<&[u8]>) -> Result<(), RawError> {
        let rc = match value {
            // SAFETY: the pointer is valid for `len` bytes and SQLite copies them (TRANSIENT).
            Some(bytes) => unsafe {
                ffi::sqlite3_bind_blob64(
                    self.stmt.as_ptr(),
                    index,
                    bytes.as_ptr().cast(),
                    bytes.len() as u64,
                    transient(),
                )
            },
            // SAFETY: the statement is live.
            None => unsafe { ffi::sqlite3_bind_null(self.stmt.as_ptr(), index) },
        };
        self.check(rc)
    }

    /// Runs the statement to its next row: `true` if a row is ready, `false` when done.
    pub fn step(&mut self) -> Result<bool, RawError> {
        // SAFETY: the statement is live and its connection is locked for us.
        match unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) } {
            ffi::SQLITE_ROW => Ok(true),
            ffi::SQLITE_DONE => Ok(false),
            rc => Err(self.db.error(rc)),
        }
    }

    /// Makes the statement ready to run again with new bindings.
    pub fn reset(&mut self) -> Result<(), RawError> {
        // SAFETY: the statement is live.
        let rc = unsafe { ffi::sqlite3_reset(self.stmt.as_ptr()) };
        self.check(rc)
    }

    /// Whether column `index` (0-based) of the current row is NULL.
    pub fn is_null(&self, index: c_int) -> bool {
        // SAFETY: a row is current; SQLite returns NULL for out-of-range columns.
        unsafe { ffi::sqlite3_column_type(self.stmt.as_ptr(), index) == ffi::SQLITE_NULL }
    }

    /// Column `index` of the current row as an integer.
    pub fn column_i64(&self, index: c_int) -> i64 {
        // SAFETY: a row is current.
        unsafe { ffi::sqlite3_column_int64(self.stmt.as_ptr(), index) }
    }

    /// Column `index` of the current row as text, `None` if NULL or not UTF-8.
    pub fn column_text(&mut self, index: c_int) -> Option<&str> {
        // SAFETY: a row is current. The pointer SQLite returns stays valid until the next
        // step, reset, finalize or type conversion of this column, all of which need
        // `&mut self`, so the borrow cannot outlive it.
        unsafe {
            let ptr = ffi::sqlite3_column_text(self.stmt.as_ptr(), index);
            if ptr.is_null() {
                return None;
            }
            let len = usize::try_from(ffi::sqlite3_column_bytes(self.stmt.as_ptr(), index)).ok()?;
            std::str::from_utf8(std::slice::from_raw_parts(ptr, len)).ok()
        }
    }

    /// Column `index` of the current row as bytes, `None` if NULL.
    pub fn column_blob(&mut self, index: c_int) -> Option<&[u8]> {
        // SAFETY: as for `column_text`.
        unsafe {
            let ptr = ffi::sqlite3_column_blob(self.stmt.as_ptr(), index);
            if ptr.is_null() {
                return None;
            }
            let len = usize::try_from(ffi::sqlite3_column_bytes(self.stmt.as_ptr(), index)).ok()?;
            Some(std::slice::from_raw_parts(ptr.cast::<u8>(), len))
        }
    }
}

impl Drop for Statement<'_> {
    fn drop(&mut self) {
        // SAFETY: the statement is live and finalized exactly once.
        unsafe {
            ffi::sqlite3_finalize(self.stmt.as_ptr());
        }
    }
}
