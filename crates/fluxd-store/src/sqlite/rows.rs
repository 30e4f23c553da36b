//! Reading typed values out of rows, with decoding failures reported as corrupt data.

use std::time::SystemTime;

use sqlx::sqlite::SqliteRow;
use sqlx::{Decode, Row, Sqlite, Type};
use uuid::Uuid;

use crate::time::from_millis;
use crate::StoreError;

/// A column of any type sqlx decodes.
pub(crate) fn get<'r, T>(row: &'r SqliteRow, column: &str) -> Result<T, StoreError>
where
    T: Decode<'r, Sqlite> + Type<Sqlite>,
{
    row.try_get(column)
        .map_err(|err| StoreError::Corrupt(format!("column {column}: {err}")))
}

/// A UUID stored as text.
pub(crate) fn uuid(row: &SqliteRow, column: &str) -> Result<Uuid, StoreError> {
    let text: String = get(row, column)?;
    Uuid::parse_str(&text).map_err(|err| StoreError::Corrupt(format!("column {column}: {err}")))
}

/// A non-negative count stored as an integer.
pub(crate) fn count(row: &SqliteRow, column: &str) -> Result<u32, StoreError> {
    let value: i64 = get(row, column)?;
    u32::try_from(value).map_err(|_| StoreError::Corrupt(format!("column {column}: {value}")))
}

/// A non-negative count that may be NULL.
pub(crate) fn opt_count(row: &SqliteRow, column: &str) -> Result<Option<u32>, StoreError> {
    let value: Option<i64> = get(row, column)?;
    value
        .map(|v| u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("column {column}: {v}"))))
        .transpose()
}

/// A time stored as epoch milliseconds.
pub(crate) fn time(row: &SqliteRow, column: &str) -> Result<SystemTime, StoreError> {
    Ok(from_millis(get(row, column)?))
}

/// A time that may be NULL.
pub(crate) fn opt_time(row: &SqliteRow, column: &str) -> Result<Option<SystemTime>, StoreError> {
    Ok(get::<Option<i64>>(row, column)?.map(from_millis))
}

/// JSON stored as text.
pub(crate) fn json(row: &SqliteRow, column: &str) -> Result<serde_json::Value, StoreError> {
    let text: String = get(row, column)?;
    serde_json::from_str(&text)
        .map_err(|err| StoreError::Corrupt(format!("column {column}: {err}")))
}

/// A count as the database stores it.
pub(crate) fn int(value: u32) -> i64 {
    i64::from(value)
}
