//! Credits, the statements both backends run with the same text (`$N` parameters, `ON CONFLICT`,
//! `RETURNING`): balances and prices. Debits and refunds are triggers on `tasks` (the
//! migrations), so they commit with the insert or the final update that causes them.

use crate::sql::rows::ReadRow;
use crate::{Price, StoreError};

/// Makes tenant `$1` (at `$2`) unless it exists: a balance may be set before any key.
pub(crate) const ENSURE_TENANT: &str =
    "INSERT INTO tenants (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING";

/// Tenant `$1`'s balance.
pub(crate) const BALANCE: &str = "SELECT balance FROM credit_balances WHERE tenant = $1";

/// Every balance, by tenant.
pub(crate) const BALANCES: &str = "SELECT tenant, balance FROM credit_balances ORDER BY tenant";

/// Sets tenant `$1`'s balance to `$2` at `$3`.
pub(crate) const SET_BALANCE: &str = "INSERT INTO credit_balances (tenant, balance, updated_at) \
    VALUES ($1, $2, $3) ON CONFLICT (tenant) \
    DO UPDATE SET balance = excluded.balance, updated_at = excluded.updated_at";

/// Makes tenant `$1` unlimited.
pub(crate) const REMOVE_BALANCE: &str = "DELETE FROM credit_balances WHERE tenant = $1";

/// Adds `$2` to tenant `$1`'s balance (from 0 when it has none) at `$3`, unless that would take
/// it below 0: then no row comes back.
pub(crate) const ADD_BALANCE: &str = "INSERT INTO credit_balances (tenant, balance, updated_at) \
    SELECT $1, $2, $3 WHERE $2 >= 0 OR EXISTS (SELECT 1 FROM credit_balances WHERE tenant = $1) \
    ON CONFLICT (tenant) DO UPDATE \
    SET balance = credit_balances.balance + excluded.balance, updated_at = excluded.updated_at \
    WHERE credit_balances.balance + excluded.balance >= 0 \
    RETURNING balance";

/// Every price, by endpoint.
pub(crate) const PRICES: &str =
    "SELECT endpoint, per_task, per_megapixel FROM prices ORDER BY endpoint";

/// Sets endpoint `$1`'s price to `$2` per task and `$3` per megapixel at `$4`.
pub(crate) const SET_PRICE: &str =
    "INSERT INTO prices (endpoint, per_task, per_megapixel, updated_at) VALUES ($1, $2, $3, $4) \
     ON CONFLICT (endpoint) DO UPDATE SET per_task = excluded.per_task, \
     per_megapixel = excluded.per_megapixel, updated_at = excluded.updated_at";

/// Makes endpoint `$1` free.
pub(crate) const REMOVE_PRICE: &str = "DELETE FROM prices WHERE endpoint = $1";

/// A row of [`BALANCES`].
pub(crate) fn balance(row: &impl ReadRow) -> Result<(String, i64), StoreError> {
    Ok((row.text("tenant")?, row.int("balance")?))
}

/// A row of [`PRICES`].
pub(crate) fn price(row: &impl ReadRow) -> Result<(String, Price), StoreError> {
    Ok((
        row.text("endpoint")?,
        Price {
            per_task: row.int("per_task")?,
            per_megapixel: row.int("per_megapixel")?,
        },
    ))
}

/// What [`ADD_BALANCE`] answered: the new balance, or why there is none.
pub(crate) fn added(tenant: &str, delta: i64, found: Option<i64>) -> Result<i64, StoreError> {
    found.ok_or_else(|| {
        StoreError::Invalid(format!(
            "tenant {tenant:?}: adding {} credits would take the balance below 0",
            crate::credits_from_milli(delta)
        ))
    })
}

/// A price is never negative, per task or per megapixel.
pub(crate) fn check_price(price: &Price) -> Result<(), StoreError> {
    check_amount("a price", price.per_task)?;
    check_amount("a price", price.per_megapixel)
}

/// Prices and balances are never negative.
pub(crate) fn check_amount(what: &str, milli: i64) -> Result<(), StoreError> {
    if milli < 0 {
        return Err(StoreError::Invalid(format!("{what} must not be negative")));
    }
    Ok(())
}
