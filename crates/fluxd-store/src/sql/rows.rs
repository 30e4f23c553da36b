//! Reading typed values out of rows of either backend, with decoding failures reported as
//! corrupt data.

use std::time::SystemTime;

use sqlx::{ColumnIndex, Decode, Row, Type};
use uuid::Uuid;

use crate::time::from_millis;
use crate::StoreError;

/// The column types fluxd stores, read from a row of any backend whose driver decodes them.
pub(crate) trait ReadRow {
    /// A TEXT column.
    fn text(&self, column: &str) -> Result<String, StoreError>;
    /// A TEXT column that may be NULL.
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError>;
    /// A BIGINT column.
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    /// A BIGINT column that may be NULL.
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError>;
    /// A DOUBLE PRECISION column that may be NULL.
    fn opt_float(&self, column: &str) -> Result<Option<f64>, StoreError>;
    /// A BOOLEAN column.
    fn boolean(&self, column: &str) -> Result<bool, StoreError>;
}

fn get<'r, R, T>(row: &'r R, column: &str) -> Result<T, StoreError>
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(column)
        .map_err(|err| StoreError::Corrupt(format!("column {column}: {err}")))
}

impl<R> ReadRow for R
where
    R: Row,
    for<'a> &'a str: ColumnIndex<R>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> f64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> bool: Decode<'r, R::Database> + Type<R::Database>,
{
    fn text(&self, column: &str) -> Result<String, StoreError> {
        get(self, column)
    }
    fn opt_text(&self, column: &str) -> Result<Option<String>, StoreError> {
        get(self, column)
    }
    fn int(&self, column: &str) -> Result<i64, StoreError> {
        get(self, column)
    }
    fn opt_int(&self, column: &str) -> Result<Option<i64>, StoreError> {
        get(self, column)
    }
    fn opt_float(&self, column: &str) -> Result<Option<f64>, StoreError> {
        get(self, column)
    }
    fn boolean(&self, column: &str) -> Result<bool, StoreError> {
        get(self, column)
    }
}

/// A UUID stored as text.
pub(crate) fn uuid(row: &impl ReadRow, column: &str) -> Result<Uuid, StoreError> {
    let text = row.text(column)?;
    Uuid::parse_str(&text).map_err(|err| StoreError::Corrupt(format!("column {column}: {err}")))
}

/// A non-negative count stored as an integer.
pub(crate) fn count(row: &impl ReadRow, column: &str) -> Result<u32, StoreError> {
    let value = row.int(column)?;
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("column {column}: {value}")))
}

/// A non-negative count that may be NULL.
pub(crate) fn opt_count(row: &impl ReadRow, column: &str) -> Result<Option<u32>, StoreError> {
    row.opt_int(column)?
        .map(|v| u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("column {column}: {v}"))))
        .transpose()
}

/// A time stored as epoch milliseconds.
pub(crate) fn time(row: &impl ReadRow, column: &str) -> Result<SystemTime, StoreError> {
    Ok(from_millis(row.int(column)?))
}

/// A time that may be NULL.
pub(crate) fn opt_time(row: &impl ReadRow, column: &str) -> Result<Option<SystemTime>, StoreError> {
    Ok(row.opt_int(column)?.map(from_millis))
}

/// JSON stored as text.
pub(crate) fn json(row: &impl ReadRow, column: &str) -> Result<serde_json::Value, StoreError> {
    let text = row.text(column)?;
    serde_json::from_str(&text)
        .map_err(|err| StoreError::Corrupt(format!("column {column}: {err}")))
}

/// A count as the database stores it.
pub(crate) fn int(value: u32) -> i64 {
    i64::from(value)
}

/// The u64 seed's bits as the signed 64-bit integer SQL stores, and back.
pub(crate) fn seed_to_sql(seed: u64) -> i64 {
    i64::from_ne_bytes(seed.to_ne_bytes())
}

/// The inverse of [`seed_to_sql`].
pub(crate) fn seed_from_sql(stored: i64) -> u64 {
    u64::from_ne_bytes(stored.to_ne_bytes())
}
