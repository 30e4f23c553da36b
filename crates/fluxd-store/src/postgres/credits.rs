//! Credits on PostgreSQL: balances and prices (the statements of [`crate::sql::credits`]).
//! Debits and refunds are the `tasks` triggers of schema version 3.

use sqlx::postgres::PgConnection;
use sqlx::Connection;

use crate::postgres::map_pg;
use crate::sql::credits::{self as sql, check_amount};
use crate::time::now_millis;
use crate::{Price, StoreError};

pub(super) async fn balance(
    conn: &mut PgConnection,
    tenant: &str,
) -> Result<Option<i64>, StoreError> {
    sqlx::query_scalar(sql::BALANCE)
        .bind(tenant)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_pg)
}

pub(super) async fn balances(conn: &mut PgConnection) -> Result<Vec<(String, i64)>, StoreError> {
    let rows = sqlx::query(sql::BALANCES)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_pg)?;
    rows.iter().map(sql::balance).collect()
}

/// The tenant's row first, in the same transaction as what needs it.
async fn ensure_tenant(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &str,
) -> Result<(), StoreError> {
    sqlx::query(sql::ENSURE_TENANT)
        .bind(tenant)
        .bind(now_millis())
        .execute(&mut **tx)
        .await
        .map_err(map_pg)?;
    Ok(())
}

pub(super) async fn set(
    conn: &mut PgConnection,
    tenant: &str,
    balance: Option<i64>,
) -> Result<(), StoreError> {
    let Some(balance) = balance else {
        sqlx::query(sql::REMOVE_BALANCE)
            .bind(tenant)
            .execute(&mut *conn)
            .await
            .map_err(map_pg)?;
        return Ok(());
    };
    check_amount("a balance", balance)?;
    let mut tx = conn.begin().await.map_err(map_pg)?;
    ensure_tenant(&mut tx, tenant).await?;
    sqlx::query(sql::SET_BALANCE)
        .bind(tenant)
        .bind(balance)
        .bind(now_millis())
        .execute(&mut *tx)
        .await
        .map_err(map_pg)?;
    tx.commit().await.map_err(map_pg)
}

pub(super) async fn add(
    conn: &mut PgConnection,
    tenant: &str,
    delta: i64,
) -> Result<i64, StoreError> {
    let mut tx = conn.begin().await.map_err(map_pg)?;
    ensure_tenant(&mut tx, tenant).await?;
    let found: Option<i64> = sqlx::query_scalar(sql::ADD_BALANCE)
        .bind(tenant)
        .bind(delta)
        .bind(now_millis())
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_pg)?;
    let balance = sql::added(tenant, delta, found)?;
    tx.commit().await.map_err(map_pg)?;
    Ok(balance)
}

pub(super) async fn prices(conn: &mut PgConnection) -> Result<Vec<(String, Price)>, StoreError> {
    let rows = sqlx::query(sql::PRICES)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_pg)?;
    rows.iter().map(sql::price).collect()
}

pub(super) async fn set_price(
    conn: &mut PgConnection,
    endpoint: &str,
    price: Option<Price>,
) -> Result<(), StoreError> {
    let query = match price {
        None => sqlx::query(sql::REMOVE_PRICE).bind(endpoint),
        Some(price) => {
            sql::check_price(&price)?;
            sqlx::query(sql::SET_PRICE)
                .bind(endpoint)
                .bind(price.per_task)
                .bind(price.per_megapixel)
                .bind(now_millis())
        }
    };
    query.execute(&mut *conn).await.map_err(map_pg)?;
    Ok(())
}
